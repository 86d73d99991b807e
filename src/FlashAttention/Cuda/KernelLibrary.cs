using System.Collections.Concurrent;

namespace FlashAttn.Cuda;

/// <summary>
/// Compiled kernels by (device, source file, kernel, variant, options): a memo in front of the shared module cache,
/// which compiles with NVRTC for the device's architecture and keeps cubins on disk. The memo keeps launches cheap:
/// the module cache's key hashes every kernel source, which must not happen on each launch.
/// </summary>
internal static class KernelLibrary
{
    private static readonly ConcurrentDictionary<(int Device, string File, string Kernel, string Variant, string Options), CudaKernel> Kernels = new();

    /// <summary>Extra NVRTC options for every kernel, from FLASHATTN_EXTRA_DEFINES (space-separated, e.g. "-DFA_EXACT_TANH=1"):
    /// a diagnostic aid for A/B runs of compile-time switches. They enter the cache key with the other options.</summary>
    private static readonly string[] ExtraOptions =
        (Environment.GetEnvironmentVariable("FLASHATTN_EXTRA_DEFINES") ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries);

    public static CudaKernel Get(CudaDevice device, string sourceFile, string kernelName, string variantName, IReadOnlyList<string> options)
    {
        if (ExtraOptions.Length > 0) options = [.. options, .. ExtraOptions];
        var key = (device.Ordinal, sourceFile, kernelName, variantName, string.Join(' ', options));
        if (Kernels.TryGetValue(key, out var kernel)) return kernel;
        // Concurrent first calls may both reach the module cache; it compiles once and returns the same kernel to both.
        return Kernels.GetOrAdd(key, _ => ModuleCache.Shared.GetOrCompile(KernelSources.Load(sourceFile), kernelName, variantName, options, device));
    }
}
