using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>
/// One cuBLAS handle per device context, created on first use and kept for the life of the process (creating a
/// handle costs milliseconds and allocates cuBLAS's workspace). A handle carries its stream as state, so callers bind
/// the stream and issue their GEMMs under <see cref="Lock"/>: two threads on different streams never interleave.
/// </summary>
internal sealed class CublasHandleCache
{
    private static readonly Lock s_lock = new();
    private static readonly Dictionary<nint, CublasHandleCache> s_byContext = [];

    private CublasHandleCache(CublasHandle handle) => Handle = handle;

    /// <summary>The cuBLAS handle.</summary>
    public CublasHandle Handle { get; }

    /// <summary>Held while the handle's stream is set and its work is enqueued.</summary>
    public Lock Lock { get; } = new();

    /// <summary>The handle of <paramref name="device"/>'s context (created bound to <paramref name="stream"/> when new).</summary>
    public static CublasHandleCache For(CudaDevice device, CudaStream stream)
    {
        ArgumentNullException.ThrowIfNull(device);
        lock (s_lock)
        {
            if (!s_byContext.TryGetValue(device.Context, out var cached))
            {
                cached = new CublasHandleCache(CublasHandle.Create(device, stream));
                s_byContext.Add(device.Context, cached);
            }
            return cached;
        }
    }

    /// <summary>Makes the handle issue its work on <paramref name="stream"/>; call under <see cref="Lock"/>.</summary>
    public nint Bind(CudaStream stream)
    {
        nint raw = Handle.DangerousGetHandle(); // the handle is never released while cached
        CublasException.ThrowIfFailed(CuBlas.cublasSetStream_v2(raw, stream.Handle));
        return raw;
    }
}
