namespace FlashAttn.Cuda;

/// <summary>
/// Scratch device memory for kernels that need workspace (backward's D and fp32 dQ accumulators), one grow-only buffer
/// per (device, stream). A caller leases the stream's buffer for the whole sequence of launches that use it: the lease
/// is exclusive, so the launch sequences of concurrent host threads on one stream cannot interleave, and the stream
/// then runs them in order, which lets the next lease reuse the buffer without waiting. Only growing frees the old
/// buffer (cuMemFree waits for the work that used it). So launches stay asynchronous: no allocate/free per call.
/// </summary>
public static class WorkspacePool
{
    private static readonly Dictionary<(int Device, nint Stream), Slot> Slots = [];
    private static readonly Lock Gate = new();

    /// <summary>An exclusive hold on a stream's workspace; dispose it once the launches that use it are enqueued.</summary>
    internal sealed class Lease : IDisposable
    {
        private Slot? _slot;

        internal Lease(Slot slot, nint pointer)
        {
            _slot = slot;
            Pointer = pointer;
        }

        public nint Pointer { get; }

        public void Dispose()
        {
            _slot?.Gate.Exit();
            _slot = null;
        }
    }

    internal sealed class Slot
    {
        public readonly Lock Gate = new();
        public DeviceMemory? Buffer;
    }

    /// <summary>Holds the stream's buffer, grown to at least <paramref name="bytes"/>, until the lease is disposed.</summary>
    internal static Lease Rent(CudaDevice device, CudaStream stream, long bytes)
    {
        Slot slot;
        lock (Gate)
        {
            var key = (device.Ordinal, stream.Handle);
            if (!Slots.TryGetValue(key, out slot!)) Slots[key] = slot = new Slot();
        }
        slot.Gate.Enter();
        try
        {
            if (slot.Buffer is null || slot.Buffer.ByteLength < bytes)
            {
                slot.Buffer?.Dispose();
                slot.Buffer = null;
                slot.Buffer = DeviceMemory.Allocate(device, Math.Max(bytes, 1));
            }
            return new Lease(slot, slot.Buffer.Pointer);
        }
        catch
        {
            slot.Gate.Exit();
            throw;
        }
    }

    /// <summary>Bytes held by the pool across all streams.</summary>
    public static long HeldBytes
    {
        get
        {
            long total = 0;
            foreach (var slot in SnapshotSlots())
                lock (slot.Gate) total += slot.Buffer?.ByteLength ?? 0;
            return total;
        }
    }

    /// <summary>Frees every pooled buffer (waits for the work that uses them). The next call that needs workspace allocates again.</summary>
    public static void Release()
    {
        foreach (var slot in SnapshotSlots())
            lock (slot.Gate)
            {
                slot.Buffer?.Dispose();
                slot.Buffer = null;
            }
    }

    private static List<Slot> SnapshotSlots()
    {
        lock (Gate) return [.. Slots.Values];
    }
}
