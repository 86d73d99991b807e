using System.Runtime.InteropServices;
using FlashAttn.Distributed;

namespace FlashAttn.Cuda.Interop;

/// <summary>
/// NCCL imports (libnccl.so.2), for context-parallel attention across the GPUs of one process: communicators for all of
/// them at once (ncclCommInitAll), point-to-point send and receive grouped between ncclGroupStart and ncclGroupEnd.
/// </summary>
internal static unsafe partial class Nccl
{
    internal const string Library = NativeLibraryResolver.NcclLogicalName;

    static Nccl() => NativeLibraryResolver.EnsureRegistered();

    [LibraryImport(Library)] internal static partial NcclResult ncclGetVersion(out int version);
    [LibraryImport(Library)] internal static partial NcclResult ncclCommInitAll(nint* comms, int count, int* devices);
    [LibraryImport(Library)] internal static partial NcclResult ncclCommDestroy(nint comm);
    [LibraryImport(Library)] internal static partial NcclResult ncclCommCount(nint comm, out int count);
    [LibraryImport(Library)] internal static partial NcclResult ncclCommCuDevice(nint comm, out int device);
    [LibraryImport(Library)] internal static partial NcclResult ncclGroupStart();
    [LibraryImport(Library)] internal static partial NcclResult ncclGroupEnd();

    [LibraryImport(Library)]
    internal static partial NcclResult ncclSend(nint sendBuffer, nuint count, NcclDataType type, int peer, nint comm, nint stream);

    [LibraryImport(Library)]
    internal static partial NcclResult ncclRecv(nint receiveBuffer, nuint count, NcclDataType type, int peer, nint comm, nint stream);
}
