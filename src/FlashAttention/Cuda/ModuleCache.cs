using System.Collections.Concurrent;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>
/// Compiled kernels, in memory and on disk. A module is identified by a key: SHA-256 over the sources (main file and
/// headers), the variant name, the full NVRTC options, the target architecture and the NVRTC version. In memory one
/// module is loaded per (key, device), compiled at most once even when many threads ask at the same time. On disk the
/// cubin is kept as "&lt;key&gt;.cubin" in <see cref="CacheDirectory"/>: FLASHATTN_CACHE_DIR, else
/// $XDG_CACHE_HOME/flashattention-net, else ~/.cache/flashattention-net. A cached file that is damaged or that the
/// driver refuses is deleted and the module recompiled; an unwritable folder only disables the disk cache.
/// </summary>
internal sealed class ModuleCache : IDisposable
{
    public const string CacheDirectoryEnvironmentVariable = "FLASHATTN_CACHE_DIR";

    private static readonly Lazy<ModuleCache> s_shared = new(() => new ModuleCache(DefaultCacheDirectory()));

    private readonly ConcurrentDictionary<string, Lazy<LoadedModule>> _modules = new(StringComparer.Ordinal);
    private long _compilations, _diskHits, _memoryHits, _rejectedFiles;
    private volatile bool _disposed;

    public ModuleCache(string cacheDirectory)
    {
        ArgumentException.ThrowIfNullOrEmpty(cacheDirectory);
        CacheDirectory = Path.GetFullPath(cacheDirectory);
    }

    /// <summary>The process-wide cache, over <see cref="DefaultCacheDirectory()"/>. Never disposed.</summary>
    public static ModuleCache Shared => s_shared.Value;

    /// <summary>Where cubins are kept.</summary>
    public string CacheDirectory { get; }

    /// <summary>Modules compiled by NVRTC.</summary>
    public long Compilations => Interlocked.Read(ref _compilations);

    /// <summary>Modules loaded from a cubin on disk.</summary>
    public long DiskHits => Interlocked.Read(ref _diskHits);

    /// <summary>Requests answered by an already loaded module.</summary>
    public long MemoryHits => Interlocked.Read(ref _memoryHits);

    /// <summary>Cached files deleted because they were damaged or the driver refused them.</summary>
    public long RejectedFiles => Interlocked.Read(ref _rejectedFiles);

    /// <summary>
    /// The kernel <paramref name="kernelName"/> of <paramref name="source"/> compiled as <paramref name="variantName"/>
    /// with <paramref name="options"/> (e.g. -D defines) for <paramref name="device"/>. Added options: -arch=
    /// the device's architecture (unless the caller gives an architecture), -std=c++17 and -default-device.
    /// </summary>
    public CudaKernel GetOrCompile(KernelSource source, string kernelName, string variantName, IReadOnlyList<string> options, CudaDevice device)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentException.ThrowIfNullOrEmpty(kernelName);
        ArgumentException.ThrowIfNullOrEmpty(variantName);
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(device);
        ObjectDisposedException.ThrowIf(_disposed, this);

        IReadOnlyList<string> fullOptions = BuildOptions(options, device.Architecture);
        string key = ComputeKey(source, variantName, fullOptions, device.Architecture, NvrtcCompiler.Version);
        string slot = key + "@" + device.Ordinal.ToString(CultureInfo.InvariantCulture);
        var lazy = _modules.GetOrAdd(slot, _ => new Lazy<LoadedModule>(
            () => LoadOrCompile(source, variantName, fullOptions, device, key), LazyThreadSafetyMode.ExecutionAndPublication));
        if (lazy.IsValueCreated)
            Interlocked.Increment(ref _memoryHits);
        LoadedModule module;
        try
        {
            module = lazy.Value;
        }
        catch
        {
            // Do not remember failures: the next call tries again (a transient error, or a fixed environment).
            _modules.TryRemove(KeyValuePair.Create(slot, lazy));
            throw;
        }
        return module.GetKernel(kernelName);
    }

    /// <summary>The cache file of a key.</summary>
    public string CachePath(string key) => Path.Combine(CacheDirectory, key + ".cubin");

    /// <summary>FLASHATTN_CACHE_DIR, else $XDG_CACHE_HOME/flashattention-net, else ~/.cache/flashattention-net.</summary>
    public static string DefaultCacheDirectory() =>
        DefaultCacheDirectory(Environment.GetEnvironmentVariable, Environment.GetFolderPath(Environment.SpecialFolder.UserProfile));

    internal static string DefaultCacheDirectory(Func<string, string?> environment, string? home)
    {
        string? explicitDir = environment(CacheDirectoryEnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(explicitDir))
            return explicitDir;
        string? xdg = environment("XDG_CACHE_HOME");
        if (!string.IsNullOrWhiteSpace(xdg))
            return Path.Combine(xdg, "flashattention-net");
        if (string.IsNullOrEmpty(home))
            home = environment("HOME");
        return string.IsNullOrEmpty(home)
            ? Path.Combine(Path.GetTempPath(), "flashattention-net")
            : Path.Combine(home, ".cache", "flashattention-net");
    }

    /// <summary>The caller's options plus the architecture (unless given), -std=c++17 and -default-device.</summary>
    internal static IReadOnlyList<string> BuildOptions(IReadOnlyList<string> options, string architecture)
    {
        var full = new List<string>(options.Count + 3);
        if (!options.Any(NvrtcCompiler.IsArchOption))
            full.Add("-arch=" + architecture);
        full.AddRange(options);
        if (!options.Any(o => o.StartsWith("-std=", StringComparison.Ordinal) || o.StartsWith("--std=", StringComparison.Ordinal)))
            full.Add("-std=c++17");
        if (!options.Contains("-default-device") && !options.Contains("--device-as-default-execution-space"))
            full.Add("-default-device");
        return full;
    }

    /// <summary>Lowercase hex SHA-256 identifying a compiled module.</summary>
    internal static string ComputeKey(KernelSource source, string variantName, IReadOnlyList<string> fullOptions, string architecture,
        (int Major, int Minor) nvrtcVersion)
    {
        var material = new StringBuilder()
            .Append("flashattention-net cubin v1\n")
            .Append(source.ContentHash).Append('\n')
            .Append(variantName).Append('\n')
            .AppendJoin('\u001f', fullOptions).Append('\n')
            .Append(architecture).Append('\n')
            .Append(CultureInfo.InvariantCulture, $"nvrtc {nvrtcVersion.Major}.{nvrtcVersion.Minor}");
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(material.ToString())));
    }

    private LoadedModule LoadOrCompile(KernelSource source, string variantName, IReadOnlyList<string> fullOptions, CudaDevice device, string key)
    {
        string path = CachePath(key);
        byte[]? cached = CubinCacheFile.TryRead(path, out string? problem);
        if (cached is null && problem is not null)
            Reject(path);
        if (cached is not null)
        {
            var (module, result) = TryLoadModule(device, cached);
            if (module is not null)
            {
                Interlocked.Increment(ref _diskHits);
                return new LoadedModule(device, module, variantName, key);
            }
            if (!IsImageProblem(result))
                CudaException.ThrowIfFailed(result, $"cuModuleLoadData({variantName}, cached {path})");
            Reject(path);
        }

        Interlocked.Increment(ref _compilations);
        byte[] cubin = NvrtcCompiler.CompileToCubin(source.Text, source.Name, source.Headers, fullOptions, variantName);
        var (compiled, loadResult) = TryLoadModule(device, cubin);
        if (compiled is null)
            CudaException.ThrowIfFailed(loadResult, $"cuModuleLoadData({variantName}, {device.Architecture}, freshly compiled)");
        CubinCacheFile.TryWrite(path, cubin); // best effort: a read-only cache folder only costs recompilation
        return new LoadedModule(device, compiled!, variantName, key);
    }

    private void Reject(string path)
    {
        Interlocked.Increment(ref _rejectedFiles);
        CubinCacheFile.TryDelete(path);
    }

    private static bool IsImageProblem(CudaResult result) => result is CudaResult.InvalidImage or CudaResult.NoBinaryForGpu
        or CudaResult.InvalidPtx or CudaResult.UnsupportedPtxVersion or CudaResult.InvalidSource or CudaResult.InvalidValue;

    private static unsafe (CudaModuleHandle? Module, CudaResult Result) TryLoadModule(CudaDevice device, byte[] image)
    {
        device.MakeCurrent();
        var handle = new CudaModuleHandle(device.Context);
        CudaResult result;
        nint raw;
        fixed (byte* p = image)
            result = CudaDriver.cuModuleLoadData(out raw, p);
        if (result != CudaResult.Success)
            return (null, result);
        handle.Attach(raw);
        return (handle, result);
    }

    /// <summary>Unloads every module this cache loaded (not for <see cref="Shared"/>); their kernels can no longer launch.</summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        foreach (var lazy in _modules.Values)
            if (lazy.IsValueCreated)
                lazy.Value.Dispose();
        _modules.Clear();
    }

    /// <summary>A loaded module and the kernels looked up in it.</summary>
    private sealed class LoadedModule(CudaDevice device, CudaModuleHandle module, string variantName, string key) : IDisposable
    {
        private readonly ConcurrentDictionary<string, CudaKernel> _kernels = new(StringComparer.Ordinal);

        public CudaKernel GetKernel(string name) => _kernels.GetOrAdd(name, n =>
        {
            bool added = false;
            try
            {
                module.DangerousAddRef(ref added);
                device.MakeCurrent();
                CudaResult result = CudaDriver.cuModuleGetFunction(out nint function, module.DangerousGetHandle(), n);
                if (result == CudaResult.NotFound)
                    throw new InvalidOperationException(
                        $"Kernel '{n}' is not in module '{variantName}'. Is it declared extern \"C\" __global__ (unmangled) in the source?");
                CudaException.ThrowIfFailed(result, $"cuModuleGetFunction({variantName}, {n})");
                return new CudaKernel(device, module, function, n, variantName, key);
            }
            finally
            {
                if (added)
                    module.DangerousRelease();
            }
        });

        public void Dispose() => module.Dispose();
    }
}
