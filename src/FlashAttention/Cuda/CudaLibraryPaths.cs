namespace FlashAttn.Cuda;

/// <summary>
/// Explicit locations of the native CUDA libraries. Each takes a full path to the library file or a folder holding it,
/// and wins over every other place searched (environment variables FLASHATTN_CUDA_LIBRARY, FLASHATTN_NVRTC_LIBRARY,
/// FLASHATTN_CUBLAS_LIBRARY, FLASHATTN_NCCL_LIBRARY, then CUDA_PATH/CUDA_HOME, /usr/local/cuda/lib64, the loader path and pip's nvidia wheels).
/// Set them before the first CUDA call: a library, once loaded, stays loaded for the life of the process.
/// </summary>
public static class CudaLibraryPaths
{
    /// <summary>The NVIDIA driver library (libcuda.so.1, nvcuda.dll).</summary>
    public static string? Cuda { get; set; }

    /// <summary>The NVRTC runtime compiler (libnvrtc.so.13 or libnvrtc.so.12; nvrtc64_130_0.dll or nvrtc64_120_0.dll).</summary>
    public static string? Nvrtc { get; set; }

    /// <summary>cuBLAS (libcublas.so.13 or libcublas.so.12), used only by the unfused baseline.</summary>
    public static string? Cublas { get; set; }

    /// <summary>NCCL (libnccl.so.2, Linux only), used only by multi-GPU attention.</summary>
    public static string? Nccl { get; set; }
}
