using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>
/// A CUDA stream (CUstream). Work is queued on a stream and runs in order; nothing here waits unless asked
/// (<see cref="Synchronize"/>). <see cref="Legacy"/> is the legacy default stream (handle 0), the one libtorch uses
/// unless told otherwise and the one synchronous copies run on; <see cref="Create()"/> makes a non-blocking stream,
/// which does not wait for the legacy stream (order it with events, or synchronise).
/// </summary>
public sealed class CudaStream : IDisposable
{
    private readonly StreamHandle? _owned;
    private readonly nint _handle;
    private readonly CudaDevice? _device;
    private bool _disposed;

    private CudaStream(nint handle, StreamHandle? owned, CudaDevice? device)
    {
        _handle = handle;
        _owned = owned;
        _device = device;
    }

    /// <summary>The legacy default stream (handle 0) of the default device's primary context. Never disposed.</summary>
    public static CudaStream Legacy { get; } = new(0, null, null);

    /// <summary>Creates a non-blocking stream (CU_STREAM_NON_BLOCKING) on the default device.</summary>
    public static CudaStream Create() => Create(CudaDevice.Default);

    /// <summary>Creates a non-blocking stream (CU_STREAM_NON_BLOCKING) on <paramref name="device"/>.</summary>
    public static CudaStream Create(CudaDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        device.MakeCurrent();
        var owned = new StreamHandle(device.Context);
        CudaException.ThrowIfFailed(CudaDriver.cuStreamCreate(out nint raw, CuFlags.StreamNonBlocking));
        owned.Attach(raw);
        return new CudaStream(raw, owned, device);
    }

    /// <summary>
    /// Wraps a stream created elsewhere (e.g. <c>torch.cuda.current_stream().cuda_stream</c>) in the default device's
    /// primary context, without taking ownership: <see cref="Dispose"/> does not destroy it.
    /// </summary>
    public static CudaStream FromHandle(nint handle) => handle == 0 ? Legacy : new CudaStream(handle, null, null);

    /// <summary>The CUstream handle (0 for the legacy default stream).</summary>
    public nint Handle
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _handle;
        }
    }

    /// <summary>True when this object created the stream and destroys it on <see cref="Dispose"/>.</summary>
    public bool IsOwned => _owned is not null;

    /// <summary>True for the legacy default stream.</summary>
    public bool IsLegacy => _handle == 0;

    /// <summary>Blocks the calling thread until all work queued on the stream has finished.</summary>
    public void Synchronize()
    {
        (_device ?? CudaDevice.Default).MakeCurrent();
        CudaException.ThrowIfFailed(CudaDriver.cuStreamSynchronize(Handle));
    }

    /// <summary>Destroys an owned stream (pending work still completes); does nothing for borrowed ones and the legacy stream.</summary>
    public void Dispose()
    {
        if (_handle == 0 || _disposed)
            return;
        _disposed = true;
        _owned?.Dispose();
    }

    /// <inheritdoc />
    public override string ToString() => _handle == 0 ? "CudaStream(legacy)" : $"CudaStream(0x{_handle:x}{(IsOwned ? "" : ", borrowed")})";
}
