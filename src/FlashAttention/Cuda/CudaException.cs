using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>A CUDA Driver API call failed. The message names the call, the CUresult and the driver's description.</summary>
public class CudaException : Exception
{
    /// <summary>The driver's result code.</summary>
    public CudaResult Result { get; }

    /// <summary>The failing call as written in the source (e.g. <c>CudaDriver.cuMemAlloc_v2(out p, bytes)</c>).</summary>
    public string Expression { get; }

    /// <summary>Creates the exception for a failed call.</summary>
    public CudaException(CudaResult result, string expression)
        : this(FormatMessage(result, expression), result, expression)
    {
    }

    /// <summary>Creates the exception with a custom message.</summary>
    protected CudaException(string message, CudaResult result, string expression)
        : base(message)
    {
        Result = result;
        Expression = expression;
    }

    /// <summary>Throws a <see cref="CudaException"/> (or <see cref="CudaOutOfMemoryException"/>) unless <paramref name="result"/> is success.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void ThrowIfFailed(CudaResult result, [CallerArgumentExpression(nameof(result))] string expression = "")
    {
        if (result != CudaResult.Success)
            Throw(result, expression);
    }

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Throw(CudaResult result, string expression) =>
        throw (result == CudaResult.OutOfMemory ? new CudaOutOfMemoryException(expression) : new CudaException(result, expression));

    /// <summary>True for errors that leave the context unusable: every later call fails until the process restarts.</summary>
    public static bool IsSticky(CudaResult result) => result is CudaResult.IllegalAddress or CudaResult.LaunchTimeout
        or CudaResult.Assert or CudaResult.HardwareStackError or CudaResult.IllegalInstruction or CudaResult.MisalignedAddress
        or CudaResult.InvalidAddressSpace or CudaResult.InvalidPc or CudaResult.LaunchFailed or CudaResult.EccUncorrectable;

    internal static string FormatMessage(CudaResult result, string expression)
    {
        string message = $"{(string.IsNullOrEmpty(expression) ? "A CUDA driver call" : expression)} failed: {Describe(result)}.";
        if (IsSticky(result))
            message += " This error is sticky: the CUDA context is now unusable and the process must be restarted. " +
                       "Run the failing case under compute-sanitizer to find the faulting access.";
        return message;
    }

    /// <summary>
    /// "CUDA_ERROR_NAME (code): driver description". Never throws: when the driver cannot describe the code (not loaded,
    /// unknown value), falls back to the enum name.
    /// </summary>
    internal static string Describe(CudaResult result)
    {
        string? name = null, text = null;
        try
        {
            if (CudaDriver.cuGetErrorName(result, out nint namePtr) == CudaResult.Success && namePtr != 0)
                name = Marshal.PtrToStringUTF8(namePtr);
            if (CudaDriver.cuGetErrorString(result, out nint textPtr) == CudaResult.Success && textPtr != 0)
                text = Marshal.PtrToStringUTF8(textPtr);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or CudaUnavailableException)
        {
            // The driver library is not there to ask; fall back to our own names.
        }
        name ??= Enum.IsDefined(result) ? $"CudaResult.{result}" : "CUDA error";
        return text is null ? $"{name} ({(int)result})" : $"{name} ({(int)result}): {text}";
    }
}
