using System.Reflection;
using System.Runtime.InteropServices;

namespace FlashAttn.Cuda.Interop;

/// <summary>
/// Maps the logical library names of this assembly's imports ("cuda", "nvrtc", "cublas", "nccl") to the real files, found by
/// <see cref="LibrarySearch"/>. Registered once per process by <see cref="EnsureRegistered"/> (called by
/// <see cref="CudaDevice"/> and by the static constructors of the import classes). Successful loads are cached;
/// failures are not, so that setting <see cref="CudaLibraryPaths"/> afterwards still helps.
/// </summary>
internal static class NativeLibraryResolver
{
    internal const string CudaLogicalName = "cuda";
    internal const string NvrtcLogicalName = "nvrtc";
    internal const string CublasLogicalName = "cublas";
    internal const string NcclLogicalName = "nccl";

    private static readonly Lock s_registerLock = new();
    private static readonly Lock s_loadLock = new();
    private static volatile bool s_registered;
    private static readonly nint[] s_handles = new nint[4];
    private static readonly string?[] s_loadedFrom = new string?[4];

    /// <summary>Installs the resolver for this assembly; safe to call any number of times from any thread.</summary>
    public static void EnsureRegistered()
    {
        if (s_registered)
            return;
        lock (s_registerLock)
        {
            if (s_registered)
                return;
            try
            {
                NativeLibrary.SetDllImportResolver(typeof(NativeLibraryResolver).Assembly, Resolve);
            }
            catch (InvalidOperationException e)
            {
                throw new InvalidOperationException(
                    "Another DllImportResolver is already registered for the FlashAttention assembly; only NativeLibraryResolver may register one.", e);
            }
            s_registered = true;
        }
    }

    private static nint Resolve(string libraryName, Assembly assembly, DllImportSearchPath? searchPath)
    {
        CudaLibraryKind? kind = libraryName switch
        {
            CudaLogicalName => CudaLibraryKind.Driver,
            NvrtcLogicalName => CudaLibraryKind.Nvrtc,
            CublasLogicalName => CudaLibraryKind.Cublas,
            NcclLogicalName => CudaLibraryKind.Nccl,
            _ => null,
        };
        // Another name: let the runtime's default probing handle it. Ours: load or throw CudaUnavailableException
        // with the full search report (better than the runtime's DllNotFoundException for 'cuda').
        return kind is null ? 0 : Load(kind.Value);
    }

    /// <summary>Loads the library (once), or throws <see cref="CudaUnavailableException"/> listing every place searched.</summary>
    public static nint Load(CudaLibraryKind kind) =>
        TryLoad(kind, out nint handle, out string failure) ? handle : throw new CudaUnavailableException(failure);

    /// <summary>Loads the library (once); on failure <paramref name="failure"/> lists every place searched and the fix.</summary>
    public static bool TryLoad(CudaLibraryKind kind, out nint handle, out string failure)
    {
        handle = Volatile.Read(ref s_handles[(int)kind]);
        failure = "";
        if (handle != 0)
            return true;
        lock (s_loadLock)
        {
            handle = s_handles[(int)kind];
            if (handle != 0)
                return true;
            var env = LibrarySearchEnvironment.Current;
            var result = LibrarySearch.Search(LibrarySpec.For(kind, env.IsWindows), ExplicitSetting(kind), env);
            if (result.Handle == 0)
            {
                failure = result.FailureMessage;
                return false;
            }
            s_loadedFrom[(int)kind] = result.LoadedFrom;
            Volatile.Write(ref s_handles[(int)kind], result.Handle);
            handle = result.Handle;
            return true;
        }
    }

    /// <summary>Where a loaded library came from (null when it is not loaded).</summary>
    public static string? LoadedFrom(CudaLibraryKind kind)
    {
        lock (s_loadLock)
            return s_loadedFrom[(int)kind];
    }

    private static string? ExplicitSetting(CudaLibraryKind kind) => kind switch
    {
        CudaLibraryKind.Driver => CudaLibraryPaths.Cuda,
        CudaLibraryKind.Nvrtc => CudaLibraryPaths.Nvrtc,
        CudaLibraryKind.Cublas => CudaLibraryPaths.Cublas,
        CudaLibraryKind.Nccl => CudaLibraryPaths.Nccl,
        _ => null,
    };
}
