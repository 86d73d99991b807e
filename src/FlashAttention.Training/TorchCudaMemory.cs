using System.Runtime.InteropServices;
using FlashAttn.Cuda;
using FlashAttn.TorchSharp;
using TorchSharp;

namespace FlashAttn.Training;

/// <summary>
/// Device memory around libtorch's caching allocator, with what TorchSharp 0.107 exposes: no <c>torch.cuda.empty_cache</c>,
/// no <c>max_memory_allocated</c> (and no NVML here). Used memory is read from the driver (<c>cuMemGetInfo</c> through
/// <see cref="CudaDevice.GetMemoryInfo"/>), and the allocator's cache is emptied by making it fail an allocation.
/// </summary>
internal static class TorchCudaMemory
{
    /// <summary>
    /// Returns the blocks libtorch's caching allocator holds but does not use to the driver (<c>torch.cuda.empty_cache()</c>'s
    /// effect). TorchSharp does not bind emptyCache, but the allocator does the same on its own before it reports an out
    /// of memory: when cudaMalloc fails it frees every cached, unused segment and retries. So this first finalises any
    /// undisposed tensor wrappers, then asks for an impossible 1 PiB and swallows the resulting out-of-memory error.
    /// </summary>
    public static void ReleaseCachedBlocks(torch.Device device)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        try
        {
            using var impossible = torch.empty([1L << 50], torch.ScalarType.Byte, device);
        }
        catch (ExternalException)
        {
            // Expected: "CUDA out of memory. Tried to allocate 1024.00 TiB", after the cache was released.
        }
    }

    /// <summary>Device-wide used memory (total - free, every process and context on the GPU), or -1 without a device.</summary>
    public static long UsedBytes(CudaDevice? device)
    {
        if (device is null)
            return -1;
        var (free, total) = device.GetMemoryInfo();
        return total - free;
    }

    /// <summary>
    /// Whether <paramref name="exception"/> is a CUDA out-of-memory: libtorch's ("CUDA out of memory", surfacing in
    /// TorchSharp as an ExternalException), ours (<see cref="CudaOutOfMemoryException"/>), cuBLAS failing to allocate
    /// its workspace, or libtorch's "invalid gradient" error whose cause, recorded by our backward, is one of those.
    /// </summary>
    public static bool IsOutOfMemory(Exception exception)
    {
        if (IsOutOfMemoryChain(exception))
            return true;
        return exception.Message.Contains("invalid gradient", StringComparison.OrdinalIgnoreCase)
               && FlashAttentionTorch.LastBackwardException is { } cause && IsOutOfMemoryChain(cause);
    }

    private static bool IsOutOfMemoryChain(Exception exception)
    {
        for (Exception? e = exception; e is not null; e = e.InnerException)
        {
            if (e is CudaOutOfMemoryException
                || e.Message.Contains("out of memory", StringComparison.OrdinalIgnoreCase)
                || e.Message.Contains("CUBLAS_STATUS_ALLOC_FAILED", StringComparison.Ordinal))
                return true;
        }
        return false;
    }
}
