namespace FlashAttn.Cuda.Interop;

/// <summary>The native libraries the CUDA path uses.</summary>
internal enum CudaLibraryKind
{
    Driver,
    Nvrtc,
    Cublas,
    Nccl,
}

/// <summary>What to look for, for one library on one platform, and what to tell the user when it is missing.</summary>
internal sealed record LibrarySpec(
    CudaLibraryKind Kind,
    string DisplayName,
    string SettingName,
    string EnvironmentVariable,
    IReadOnlyList<string> FileNames,
    bool SearchToolkitFolders,
    IReadOnlyList<string> SystemFolders,
    IReadOnlyList<string> PipSubfolders,
    string Fix)
{
    public static LibrarySpec For(CudaLibraryKind kind, bool isWindows) => kind switch
    {
        // The toolkit folders hold only a link stub of libcuda (lib64/stubs), never the driver itself, so the driver is
        // looked for on the loader path and in the distributions' driver folders instead.
        CudaLibraryKind.Driver => new(kind, "The NVIDIA driver library", "CudaLibraryPaths.Cuda", "FLASHATTN_CUDA_LIBRARY",
            isWindows ? ["nvcuda.dll"] : ["libcuda.so.1"],
            SearchToolkitFolders: false,
            isWindows ? [] : ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib/wsl/lib"],
            PipSubfolders: [],
            Fix: "Fix: install the NVIDIA driver (it provides " + (isWindows ? "nvcuda.dll" : "libcuda.so.1") +
                 "; check with nvidia-smi), or set FLASHATTN_CUDA_LIBRARY=" + (isWindows ? "C:\\path\\to\\nvcuda.dll" : "/path/to/libcuda.so.1") +
                 " (or CudaLibraryPaths.Cuda). Without a GPU, use the CPU path."),
        CudaLibraryKind.Nvrtc => new(kind, "NVRTC (the CUDA runtime compiler)", "CudaLibraryPaths.Nvrtc", "FLASHATTN_NVRTC_LIBRARY",
            isWindows ? ["nvrtc64_130_0.dll", "nvrtc64_120_0.dll"] : ["libnvrtc.so.13", "libnvrtc.so.12"],
            SearchToolkitFolders: true,
            SystemFolders: [],
            PipSubfolders: ["nvidia/cu13/lib", "nvidia/cuda_nvrtc/lib"],
            Fix: "Fix: install the CUDA toolkit 12 or 13 (or only its NVRTC: `pip install nvidia-cuda-nvrtc` for CUDA 13, " +
                 "`pip install nvidia-cuda-nvrtc-cu12` for CUDA 12), or set FLASHATTN_NVRTC_LIBRARY=" +
                 (isWindows ? "C:\\path\\to\\nvrtc64_130_0.dll" : "/path/to/libnvrtc.so.13") + " (or CudaLibraryPaths.Nvrtc)."),
        CudaLibraryKind.Cublas => new(kind, "cuBLAS", "CudaLibraryPaths.Cublas", "FLASHATTN_CUBLAS_LIBRARY",
            isWindows ? ["cublas64_13.dll", "cublas64_12.dll"] : ["libcublas.so.13", "libcublas.so.12"],
            SearchToolkitFolders: true,
            SystemFolders: [],
            PipSubfolders: ["nvidia/cu13/lib", "nvidia/cublas/lib"],
            Fix: "Fix: install the CUDA toolkit 12 or 13 (or `pip install nvidia-cublas` for CUDA 13, `pip install nvidia-cublas-cu12` " +
                 "for CUDA 12), or set FLASHATTN_CUBLAS_LIBRARY=" + (isWindows ? "C:\\path\\to\\cublas64_13.dll" : "/path/to/libcublas.so.13") +
                 " (or CudaLibraryPaths.Cublas). cuBLAS is needed only by the unfused baseline."),
        // NCCL ships for Linux only: as a distribution package (libnccl2), in pip's nvidia-nccl wheels (PyTorch brings one), or
        // beside the toolkit.
        CudaLibraryKind.Nccl => new(kind, "NCCL (the NVIDIA collective communications library)", "CudaLibraryPaths.Nccl", "FLASHATTN_NCCL_LIBRARY",
            isWindows ? [] : ["libnccl.so.2"],
            SearchToolkitFolders: true,
            isWindows ? [] : ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"],
            PipSubfolders: ["nvidia/nccl/lib", "nvidia/cu13/lib"],
            Fix: isWindows
                ? "Fix: NCCL runs on Linux only; multi-GPU attention needs a Linux machine."
                : "Fix: install NCCL 2 (the libnccl2 package, or `pip install nvidia-nccl-cu12`; PyTorch's wheels bring it), or set " +
                  "FLASHATTN_NCCL_LIBRARY=/path/to/libnccl.so.2 (or CudaLibraryPaths.Nccl). NCCL is needed only by multi-GPU attention."),
        _ => throw new ArgumentOutOfRangeException(nameof(kind)),
    };

    /// <summary>
    /// A library to load from the same folder first, so that a library whose dependency sits beside it loads even when
    /// that folder is not on the loader path (libcublas needs libcublasLt).
    /// </summary>
    public string? CompanionOf(string fileName) =>
        Kind == CudaLibraryKind.Cublas
            ? fileName.StartsWith("libcublas.", StringComparison.Ordinal) ? "libcublasLt." + fileName["libcublas.".Length..]
            : fileName.StartsWith("cublas64_", StringComparison.Ordinal) ? "cublasLt64_" + fileName["cublas64_".Length..]
            : null
            : null;
}
