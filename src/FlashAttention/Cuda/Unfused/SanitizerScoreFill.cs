using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>
/// A compute-sanitizer aid for the unfused baseline. initcheck reports our softmax kernels' reads of the score matrices
/// that cuBLAS GEMMs (beta = 0) wrote in full just before: it does not see those GEMMs' stores. With
/// FLASHATTN_UNFUSED_ZERO_SCORES=1 the score and dP buffers are zeroed (cuMemsetD8Async, which initcheck does track)
/// before the GEMM overwrites them, so an initcheck run reports only what reads memory nothing wrote
/// (scripts/sanitize.sh sets it for that workload; docs/SANITIZER.md). Unset, nothing is done.
/// </summary>
internal static class SanitizerScoreFill
{
    public const string Variable = "FLASHATTN_UNFUSED_ZERO_SCORES";

    private static readonly bool s_enabled = Environment.GetEnvironmentVariable(Variable) == "1";

    public static void ZeroIfRequested(DeviceMemory buffer, CudaStream stream)
    {
        if (!s_enabled || buffer.ByteLength == 0) return;
        CudaException.ThrowIfFailed(CudaDriver.cuMemsetD8Async(buffer.Address, 0, (nuint)buffer.ByteLength, stream.Handle));
    }
}
