using FlashAttn.Cuda;

namespace FlashAttn.Cli.Gpu;

/// <summary>
/// The memory-bandwidth ceiling decode rows are judged against, measured in the same run: a device-to-device copy of a
/// <see cref="Bytes"/> buffer, timed back to back like the decode calls, as read + write bytes per second (the anchors'
/// copy_TBps = 2 x bytes / time). A bandwidth-bound kernel that only reads can reach about this figure.
/// </summary>
internal static class CopyBandwidth
{
    /// <summary>1 GiB: far beyond L2, and the size bench/peers/torch_decode.py copies.</summary>
    public const long Bytes = 1L << 30;

    /// <summary>Read + write TB/s (1e12 bytes/s).</summary>
    public static double MeasureTbps(CudaDevice device, CudaStream stream)
    {
        using var source = CudaTensor<byte>.Allocate([(nint)Bytes], device);
        using var destination = CudaTensor<byte>.Allocate([(nint)Bytes], device);
        // Touch both buffers first so first-use costs stay out of the timing.
        source.Fill(1);
        destination.Fill(0);
        device.MakeCurrent();
        var (ms, _, _) = GpuTimer.BackToBack(_ => DeviceCopy.Async(destination.DevicePointer, source.DevicePointer, Bytes, stream), stream,
            minCalls: 2, minBatchMs: 20);
        return DecodeRows.Tbps(2 * Bytes, ms);
    }
}
