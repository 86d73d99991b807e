using System.Runtime.InteropServices;

namespace FlashAttn.Cuda.Interop;

/// <summary>
/// Base of the driver-object handles. The driver needs the owning context current to free most objects, and a
/// finalizer runs on its own thread, so the handle remembers its context, makes it current for the release and
/// restores whatever was current before. Release never throws: errors (e.g. CUDA_ERROR_DEINITIALIZED at process
/// exit, or a sticky error) are ignored, since there is nobody to report them to.
/// </summary>
internal abstract class CudaSafeHandle : SafeHandle
{
    /// <summary>The context the object belongs to.</summary>
    public nint Context { get; }

    protected CudaSafeHandle(nint context)
        : base(0, ownsHandle: true) => Context = context;

    public override bool IsInvalid => handle == 0;

    /// <summary>Takes ownership of a freshly created object.</summary>
    internal void Attach(nint value) => SetHandle(value);

    protected sealed override bool ReleaseHandle()
    {
        try
        {
            nint previous = 0;
            bool switched = CudaDriver.cuCtxGetCurrent(out previous) == CudaResult.Success
                            && previous != Context
                            && CudaDriver.cuCtxSetCurrent(Context) == CudaResult.Success;
            Release(handle);
            if (switched)
                CudaDriver.cuCtxSetCurrent(previous);
        }
        catch (Exception)
        {
            // Never throw from a release (it may run on the finalizer thread).
        }
        return true;
    }

    /// <summary>Frees the driver object; the return code is ignored.</summary>
    protected abstract void Release(nint value);
}

/// <summary>Device memory from cuMemAlloc_v2, freed with cuMemFree_v2.</summary>
internal sealed class DeviceMemoryHandle(nint context) : CudaSafeHandle(context)
{
    public ulong Address => (ulong)handle;

    protected override void Release(nint value) => CudaDriver.cuMemFree_v2((ulong)value);
}

/// <summary>A module from cuModuleLoadData, unloaded with cuModuleUnload.</summary>
internal sealed class CudaModuleHandle(nint context) : CudaSafeHandle(context)
{
    protected override void Release(nint value) => CudaDriver.cuModuleUnload(value);
}

/// <summary>A stream from cuStreamCreate, destroyed with cuStreamDestroy_v2.</summary>
internal sealed class StreamHandle(nint context) : CudaSafeHandle(context)
{
    protected override void Release(nint value) => CudaDriver.cuStreamDestroy_v2(value);
}

/// <summary>An event from cuEventCreate, destroyed with cuEventDestroy_v2.</summary>
internal sealed class EventHandle(nint context) : CudaSafeHandle(context)
{
    protected override void Release(nint value) => CudaDriver.cuEventDestroy_v2(value);
}

/// <summary>A cuBLAS handle from cublasCreate_v2, destroyed with cublasDestroy_v2.</summary>
internal sealed class CublasHandle(nint context) : CudaSafeHandle(context)
{
    /// <summary>Creates a cuBLAS handle bound to <paramref name="device"/>, issuing work on <paramref name="stream"/>.</summary>
    public static CublasHandle Create(CudaDevice device, CudaStream stream)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(stream);
        device.MakeCurrent();
        var result = new CublasHandle(device.Context);
        CublasException.ThrowIfFailed(CuBlas.cublasCreate_v2(out nint raw));
        result.Attach(raw);
        try
        {
            CublasException.ThrowIfFailed(CuBlas.cublasSetStream_v2(raw, stream.Handle));
        }
        catch
        {
            result.Dispose();
            throw;
        }
        return result;
    }

    protected override void Release(nint value) => CuBlas.cublasDestroy_v2(value);
}
