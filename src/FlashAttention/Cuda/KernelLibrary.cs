namespace FlashAttn.Cuda;

/// <summary>Compiled kernels by (source file, variant): a thin front over the shared module cache, which
/// compiles with NVRTC for the device's architecture and keeps cubins on disk.</summary>
internal static class KernelLibrary
{
    public static CudaKernel Get(CudaDevice device, string sourceFile, string kernelName, string variantName, IReadOnlyList<string> options) =>
        ModuleCache.Shared.GetOrCompile(KernelSources.Load(sourceFile), kernelName, variantName, options, device);
}
