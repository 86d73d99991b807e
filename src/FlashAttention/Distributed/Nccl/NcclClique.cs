using FlashAttn.Cuda;
using FlashAttn.Cuda.Interop;

namespace FlashAttn.Distributed;

/// <summary>
/// One NCCL communicator per GPU of this process, all created together (ncclCommInitAll): the "one process for all GPUs of
/// a host" driver that docs/RING.md chooses. Rank r is the r-th device given. NCCL_NVLS_ENABLE is set to 0 first, always.
/// </summary>
public sealed unsafe class NcclClique : IDisposable
{
    private readonly nint[] _comms;
    private bool _disposed;

    private NcclClique(nint[] comms, IReadOnlyList<int> devices, int version)
    {
        _comms = comms;
        Devices = devices;
        Version = version;
    }

    /// <summary>The CUDA device ordinal of each rank.</summary>
    public IReadOnlyList<int> Devices { get; }

    /// <summary>NCCL's version code (e.g. 22703 for 2.27.3).</summary>
    public int Version { get; }

    /// <summary>Ranks in the clique.</summary>
    public int Size => _comms.Length;

    /// <summary>NCCL's version code, loading the library if needed.</summary>
    /// <exception cref="CudaUnavailableException">NCCL is not found (the message lists where it was looked for and the fix).</exception>
    public static int LibraryVersion()
    {
        NativeLibraryResolver.Load(CudaLibraryKind.Nccl);
        NcclException.ThrowIfFailed(Nccl.ncclGetVersion(out int version));
        return version;
    }

    /// <summary>Creates communicators for the given CUDA device ordinals (distinct, each a device of this machine).</summary>
    /// <exception cref="ArgumentException">No devices, or an ordinal repeated or negative.</exception>
    /// <exception cref="CudaUnavailableException">NCCL is not found.</exception>
    /// <exception cref="NcclException">NCCL could not create the communicators.</exception>
    public static NcclClique Create(IReadOnlyList<int> devices)
    {
        ArgumentNullException.ThrowIfNull(devices);
        if (devices.Count == 0)
            throw new ArgumentException("Give at least one CUDA device ordinal.", nameof(devices));
        if (devices.Any(d => d < 0) || devices.Distinct().Count() != devices.Count)
            throw new ArgumentException($"Device ordinals must be distinct and non-negative; got [{string.Join(", ", devices)}].", nameof(devices));
        int version = LibraryVersion();
        NcclEnvironment.DisableNvls();
        var comms = new nint[devices.Count];
        int[] ordinals = [.. devices];
        fixed (nint* c = comms)
        fixed (int* d = ordinals)
            NcclException.ThrowIfFailed(Nccl.ncclCommInitAll(c, ordinals.Length, d));
        return new NcclClique(comms, ordinals, version);
    }

    /// <summary>The communicator handle of a rank (for the ring's send and receive calls).</summary>
    internal nint Communicator(int rank)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        return _comms[rank];
    }

    /// <summary>Destroys the communicators.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        foreach (nint comm in _comms)
            if (comm != 0) Nccl.ncclCommDestroy(comm);
    }
}
