using FlashAttn.Cuda;
using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cli.Gpu;

/// <summary>Device-to-device copies queued on a stream (cuMemcpyDtoDAsync): the copy-bandwidth reference and filling large
/// buffers from a small random pattern without staging gigabytes on the host.</summary>
internal static class DeviceCopy
{
    /// <summary>Queues a copy of <paramref name="bytes"/> bytes; the device's context must be current on this thread.</summary>
    public static void Async(nint destination, nint source, long bytes, CudaStream stream) =>
        CudaException.ThrowIfFailed(CudaDriver.cuMemcpyDtoDAsync_v2((ulong)destination, (ulong)source, (nuint)bytes, stream.Handle));

    /// <summary>Fills a dense tensor with copies of a dense pattern, back to back (the last one cut short), and waits for them.
    /// Repeated random values keep the data realistic enough for attention timings, which do not depend on the values.</summary>
    public static void Tile<T>(CudaTensor<T> destination, CudaTensor<T> pattern, CudaStream stream) where T : unmanaged
    {
        if (!destination.IsRowMajor || !pattern.IsRowMajor || pattern.ByteLength == 0)
            throw new ArgumentException("Tile needs dense tensors and a non-empty pattern.");
        destination.Device.MakeCurrent();
        long total = destination.ByteLength, chunk = pattern.ByteLength;
        for (long offset = 0; offset < total; offset += chunk)
            Async(destination.DevicePointer + (nint)offset, pattern.DevicePointer, Math.Min(chunk, total - offset), stream);
        stream.Synchronize();
    }
}
