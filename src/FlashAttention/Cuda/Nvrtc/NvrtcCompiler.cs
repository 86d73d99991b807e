using System.Text;
using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>
/// Compiles CUDA C++ to a CUBIN with NVRTC. Headers are passed in memory (by include name), so no toolkit include path
/// is needed. The log is always read; a failure throws <see cref="NvrtcException"/> with the variant, options and log.
/// </summary>
internal static unsafe class NvrtcCompiler
{
    private static readonly Lock s_versionLock = new();
    private static (int Major, int Minor)? s_version;

    /// <summary>The NVRTC version (loads the library; throws <see cref="CudaUnavailableException"/> when it is missing).</summary>
    public static (int Major, int Minor) Version
    {
        get
        {
            lock (s_versionLock)
            {
                if (s_version is { } known)
                    return known;
                NativeLibraryResolver.EnsureRegistered();
                NativeLibraryResolver.Load(CudaLibraryKind.Nvrtc);
                NvrtcResult result = Nvrtc.nvrtcVersion(out int major, out int minor);
                if (result != NvrtcResult.Success)
                    throw new CudaUnavailableException($"nvrtcVersion failed: {NvrtcException.Describe(result)}.");
                s_version = (major, minor);
                return (major, minor);
            }
        }
    }

    /// <summary>
    /// Compiles <paramref name="source"/> to a CUBIN. <paramref name="options"/> must name a real architecture
    /// (-arch=sm_XX or --gpu-architecture=sm_XX): a virtual one (compute_XX) yields PTX only, and no CUBIN.
    /// </summary>
    public static byte[] CompileToCubin(string source, string sourceName, IReadOnlyDictionary<string, string> headers,
        IReadOnlyList<string> options, string variantName) =>
        CompileToCubin(source, sourceName, headers, options, variantName, out _);

    /// <summary>As <see cref="CompileToCubin(string, string, IReadOnlyDictionary{string, string}, IReadOnlyList{string}, string)"/>,
    /// also returning the log of a successful compilation (warnings).</summary>
    public static byte[] CompileToCubin(string source, string sourceName, IReadOnlyDictionary<string, string> headers,
        IReadOnlyList<string> options, string variantName, out string log)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(sourceName);
        ArgumentNullException.ThrowIfNull(headers);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(variantName);
        if (!options.Any(IsRealArchOption))
            throw new ArgumentException(
                $"The options of '{variantName}' name no real GPU architecture (-arch=sm_XX); NVRTC would produce PTX, not a CUBIN.",
                nameof(options));
        _ = Version; // loads the library, or throws CudaUnavailableException with the search report

        var headerList = headers.OrderBy(h => h.Key, StringComparer.Ordinal).ToArray();
        using var headerTexts = new Utf8StringArray(headerList.Select(h => h.Value).ToArray());
        using var headerNames = new Utf8StringArray(headerList.Select(h => h.Key).ToArray());
        using var sourceAndName = new Utf8StringArray([source, sourceName]);
        using var optionArray = new Utf8StringArray(options);

        NvrtcResult result = Nvrtc.nvrtcCreateProgram(out nint program, sourceAndName.Pointer[0], sourceAndName.Pointer[1],
            headerList.Length, headerTexts.Pointer, headerNames.Pointer);
        if (result != NvrtcResult.Success)
            throw new NvrtcException(result, variantName, options, "", "nvrtcCreateProgram failed.");
        try
        {
            result = Nvrtc.nvrtcCompileProgram(program, optionArray.Count, optionArray.Pointer);
            log = ReadLog(program);
            if (result != NvrtcResult.Success)
                throw new NvrtcException(result, variantName, options, log);

            result = Nvrtc.nvrtcGetCUBINSize(program, out nuint size);
            if (result != NvrtcResult.Success || size == 0)
                throw new NvrtcException(result, variantName, options, log, "No CUBIN was produced (nvrtcGetCUBINSize).");
            var cubin = new byte[size];
            fixed (byte* p = cubin)
                result = Nvrtc.nvrtcGetCUBIN(program, p);
            if (result != NvrtcResult.Success)
                throw new NvrtcException(result, variantName, options, log, "nvrtcGetCUBIN failed.");
            return cubin;
        }
        finally
        {
            Nvrtc.nvrtcDestroyProgram(ref program);
        }
    }

    /// <summary>NVRTC spells the option -arch=sm_XX or --gpu-architecture=sm_XX (not --gpu-arch, which it rejects).</summary>
    internal static bool IsRealArchOption(string option) =>
        option.StartsWith("-arch=sm_", StringComparison.Ordinal) || option.StartsWith("--gpu-architecture=sm_", StringComparison.Ordinal);

    internal static bool IsArchOption(string option) =>
        option.StartsWith("-arch=", StringComparison.Ordinal) || option.StartsWith("--gpu-architecture=", StringComparison.Ordinal);

    private static string ReadLog(nint program)
    {
        if (Nvrtc.nvrtcGetProgramLogSize(program, out nuint size) != NvrtcResult.Success || size <= 1)
            return "";
        var buffer = new byte[size];
        fixed (byte* p = buffer)
            if (Nvrtc.nvrtcGetProgramLog(program, p) != NvrtcResult.Success)
                return "";
        int length = Array.IndexOf(buffer, (byte)0);
        return Encoding.UTF8.GetString(buffer, 0, length < 0 ? buffer.Length : length);
    }
}
