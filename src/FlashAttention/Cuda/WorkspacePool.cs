namespace FlashAttn.Cuda;

/// <summary>
/// Scratch device memory for kernels that need workspace (backward's D and fp32 dQ accumulators), one grow-only buffer
/// per (device, stream). Work on one stream runs in order, so successive calls on a stream can share its buffer
/// without waiting; only growing it frees the old buffer, and cuMemFree waits for the work that used it. This keeps
/// launches asynchronous (no allocate/free, hence no implicit synchronisation, per call).
/// </summary>
public static class WorkspacePool
{
    private static readonly Dictionary<(int Device, nint Stream), DeviceMemory> Buffers = [];
    private static readonly Lock Gate = new();

    /// <summary>A device address with at least <paramref name="bytes"/> bytes, valid until the next call for the same stream.</summary>
    internal static nint Rent(CudaDevice device, CudaStream stream, long bytes)
    {
        lock (Gate)
        {
            var key = (device.Ordinal, stream.Handle);
            if (Buffers.TryGetValue(key, out var buffer) && buffer.ByteLength >= bytes) return buffer.Pointer;
            buffer?.Dispose();
            Buffers.Remove(key);
            var grown = DeviceMemory.Allocate(device, Math.Max(bytes, 1));
            Buffers[key] = grown;
            return grown.Pointer;
        }
    }

    /// <summary>Bytes held by the pool across all streams.</summary>
    public static long HeldBytes
    {
        get
        {
            lock (Gate) return Buffers.Values.Sum(b => b.ByteLength);
        }
    }

    /// <summary>Frees every pooled buffer (waits for the work that uses them). The next call that needs workspace allocates again.</summary>
    public static void Release()
    {
        lock (Gate)
        {
            foreach (var buffer in Buffers.Values) buffer.Dispose();
            Buffers.Clear();
        }
    }
}
