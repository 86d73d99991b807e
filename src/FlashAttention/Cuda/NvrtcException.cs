using System.Runtime.InteropServices;
using System.Text;
using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>NVRTC failed to create or compile a kernel variant. Carries the variant, the options and the full compiler log.</summary>
public sealed class NvrtcException : Exception
{
    /// <summary>NVRTC's result code.</summary>
    public NvrtcResult Result { get; }

    /// <summary>The kernel variant being compiled (e.g. <c>flash_fwd_hdim128_bf16_causal</c>).</summary>
    public string VariantName { get; }

    /// <summary>The compiler options used.</summary>
    public IReadOnlyList<string> Options { get; }

    /// <summary>NVRTC's complete program log (empty when there was none).</summary>
    public string Log { get; }

    internal NvrtcException(NvrtcResult result, string variantName, IReadOnlyList<string> options, string log, string? detail = null)
        : base(FormatMessage(result, variantName, options, log, detail))
    {
        Result = result;
        VariantName = variantName;
        Options = options.ToArray();
        Log = log;
    }

    /// <summary>NVRTC's own description of a result code; never throws.</summary>
    internal static string Describe(NvrtcResult result)
    {
        string? text = null;
        try
        {
            nint p = Nvrtc.nvrtcGetErrorString(result);
            if (p != 0)
                text = Marshal.PtrToStringUTF8(p);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or CudaUnavailableException)
        {
        }
        return text ?? $"NvrtcResult.{result} ({(int)result})";
    }

    private static string FormatMessage(NvrtcResult result, string variantName, IReadOnlyList<string> options, string log, string? detail)
    {
        var text = new StringBuilder();
        text.Append("NVRTC could not compile kernel variant '").Append(variantName).Append("': ").Append(Describe(result)).Append('.');
        if (detail is not null)
            text.Append(' ').Append(detail);
        text.AppendLine().Append("Options: ").Append(string.Join(' ', options));
        text.AppendLine().Append("Log:").AppendLine().Append(string.IsNullOrWhiteSpace(log) ? "(empty)" : log.TrimEnd());
        return text.ToString();
    }
}
