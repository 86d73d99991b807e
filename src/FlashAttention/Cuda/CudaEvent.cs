using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>A CUDA event (CUevent): a marker recorded on a stream, for timing and for ordering work across streams.</summary>
public sealed class CudaEvent : IDisposable
{
    private readonly EventHandle _handle;
    private readonly CudaDevice _device;

    private CudaEvent(EventHandle handle, CudaDevice device)
    {
        _handle = handle;
        _device = device;
    }

    /// <summary>Creates an event on the default device; <paramref name="enableTiming"/> false makes it cheaper (no timestamps).</summary>
    public static CudaEvent Create(bool enableTiming = true) => Create(CudaDevice.Default, enableTiming);

    /// <summary>Creates an event on <paramref name="device"/>.</summary>
    public static CudaEvent Create(CudaDevice device, bool enableTiming = true)
    {
        ArgumentNullException.ThrowIfNull(device);
        device.MakeCurrent();
        var handle = new EventHandle(device.Context);
        CudaException.ThrowIfFailed(CudaDriver.cuEventCreate(out nint raw, enableTiming ? CuFlags.EventDefault : CuFlags.EventDisableTiming));
        handle.Attach(raw);
        return new CudaEvent(handle, device);
    }

    /// <summary>The CUevent handle.</summary>
    public nint Handle
    {
        get
        {
            ObjectDisposedException.ThrowIf(_handle.IsClosed, this);
            return _handle.DangerousGetHandle();
        }
    }

    /// <summary>Records the event at the current end of <paramref name="stream"/>'s queue.</summary>
    public void Record(CudaStream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        _device.MakeCurrent();
        CudaException.ThrowIfFailed(CudaDriver.cuEventRecord(Handle, stream.Handle));
    }

    /// <summary>Blocks until the work before the most recent <see cref="Record"/> has finished.</summary>
    public void Synchronize()
    {
        _device.MakeCurrent();
        CudaException.ThrowIfFailed(CudaDriver.cuEventSynchronize(Handle));
    }

    /// <summary>
    /// Milliseconds between two recorded, completed events (resolution about 0.5 microseconds). Synchronise on
    /// <paramref name="end"/> first; both must have been created with timing enabled.
    /// </summary>
    public static float ElapsedMilliseconds(CudaEvent start, CudaEvent end)
    {
        ArgumentNullException.ThrowIfNull(start);
        ArgumentNullException.ThrowIfNull(end);
        start._device.MakeCurrent();
        CudaException.ThrowIfFailed(CudaDriver.cuEventElapsedTime(out float ms, start.Handle, end.Handle));
        return ms;
    }

    /// <summary>Destroys the event.</summary>
    public void Dispose() => _handle.Dispose();
}
