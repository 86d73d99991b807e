using System.Globalization;

namespace FlashAttn.Cuda;

/// <summary>
/// The GPU, NVRTC and driver versions the CUDA path needs, as pure functions of the numbers (so every rule is tested without
/// a GPU). <see cref="CudaDevice"/> applies them when it opens a device: a failure becomes a
/// <see cref="CudaUnavailableException"/> with the reason, and <see cref="CudaDevice.TryGetDefault(out CudaDevice?, out string)"/> returns false with it.
/// </summary>
/// <remarks>
/// The kernels are compiled by NVRTC straight to a CUBIN for the device's real architecture (nvrtcGetCUBIN; no PTX is
/// produced, so the driver never JIT-compiles anything). A CUBIN loads on a driver of the same CUDA major version as the
/// NVRTC that built it, or a newer one (minor version compatibility: NVRTC 12.8 with a CUDA 12.2 driver works), but not
/// on an older major version. So the driver rule compares major versions only; requiring driver &gt;= NVRTC in full would
/// reject the common pip NVRTC 12.x newer than the installed 12.y driver.
/// </remarks>
internal static class CudaRequirements
{
    /// <summary>Ampere and newer: the kernels use bf16 mma.sync, cp.async and ldmatrix, which sm_80 introduced.</summary>
    public static readonly (int Major, int Minor) MinimumComputeCapability = (8, 0);

    /// <summary>NVRTC 11.8, the first that compiles for sm_89 and sm_90, so one floor covers every GPU up to Hopper's base
    /// architecture. (The resolver looks for CUDA 12 and 13 NVRTC by name; older ones arrive only through an explicit path.)</summary>
    public static readonly (int Major, int Minor) MinimumNvrtc = (11, 8);

    /// <summary>Null when the GPU is new enough for the kernels, else why not and the fix.</summary>
    /// <param name="computeCapability">The device's compute capability.</param>
    /// <param name="gpu">Names the device in the message, e.g. "Tesla V100 (device 0)".</param>
    public static string? CheckComputeCapability((int Major, int Minor) computeCapability, string gpu)
    {
        if (computeCapability.CompareTo(MinimumComputeCapability) >= 0)
            return null;
        return $"{gpu} has compute capability {Text(computeCapability)}; FlashAttention.NET's CUDA kernels need sm_80 or newer " +
               "(Ampere A100/RTX 30xx, Ada, Hopper, Blackwell). Fix: run on a newer GPU, or use the CPU path.";
    }

    /// <summary>
    /// Null when this driver, NVRTC and GPU work together, else the first reason they do not (GPU too old, NVRTC too old,
    /// NVRTC too old for this GPU's architecture, driver too old for this NVRTC), naming what is too old and the fix.
    /// </summary>
    /// <param name="driverVersion">cuDriverGetVersion: the newest CUDA the driver supports, 1000 * major + 10 * minor.</param>
    /// <param name="nvrtc">nvrtcVersion.</param>
    /// <param name="computeCapability">The device's compute capability.</param>
    /// <param name="gpu">Names the device in the message.</param>
    public static string? Check(int driverVersion, (int Major, int Minor) nvrtc, (int Major, int Minor) computeCapability, string gpu = "The GPU")
    {
        if (CheckComputeCapability(computeCapability, gpu) is { } tooOldGpu)
            return tooOldGpu;

        if (nvrtc.CompareTo(MinimumNvrtc) < 0)
            return $"NVRTC {Text(nvrtc)} is too old: FlashAttention.NET needs NVRTC {Text(MinimumNvrtc)} or newer. " + NvrtcFix;

        string architecture = CudaDevice.ArchitectureFor(computeCapability.Major, computeCapability.Minor);
        var needed = FirstNvrtcFor(computeCapability);
        if (nvrtc.CompareTo(needed) < 0)
            return $"{gpu} (compute capability {Text(computeCapability)}) needs kernels built for {architecture}, which NVRTC {Text(nvrtc)} " +
                   $"cannot compile ({architecture} needs NVRTC {Text(needed)} or newer). " + NvrtcFix;

        int driverMajor = driverVersion / 1000;
        if (driverMajor < nvrtc.Major)
            return $"The NVIDIA driver is too old for NVRTC {Text(nvrtc)}: it supports CUDA up to {Text((driverMajor, driverVersion % 1000 / 10))}, " +
                   $"and the CUBINs NVRTC {nvrtc.Major}.x compiles load only on a driver for CUDA {nvrtc.Major}.0 or newer " +
                   "(cuModuleLoadData would fail). Fix: update the NVIDIA driver" + DriverBranch(nvrtc.Major) +
                   $", or use an NVRTC of CUDA {driverMajor}.x (set FLASHATTN_NVRTC_LIBRARY or CudaLibraryPaths.Nvrtc to it).";
        return null;
    }

    /// <summary>The first NVRTC that compiles for the architecture <see cref="CudaDevice.ArchitectureFor"/> picks.</summary>
    internal static (int Major, int Minor) FirstNvrtcFor((int Major, int Minor) computeCapability) => computeCapability switch
    {
        (9, 0) => (12, 0),                      // sm_90a (wgmma and the other Hopper-only instructions) arrived in CUDA 12.0
        (10, 3) or (12, 1) => (12, 9),
        (11, 0) => (13, 0),
        ( >= 10, _) => (12, 8),                 // Blackwell: sm_100, sm_101, sm_120 arrived in CUDA 12.8
        _ => MinimumNvrtc,
    };

    private const string NvrtcFix =
        "Fix: install the NVRTC of CUDA 12 or 13 (`pip install nvidia-cuda-nvrtc-cu12`, or `pip install nvidia-cuda-nvrtc` for CUDA 13, " +
        "or the CUDA toolkit), or set FLASHATTN_NVRTC_LIBRARY (or CudaLibraryPaths.Nvrtc) to a newer one.";

    /// <summary>The driver branch that first supports a CUDA major version (CUDA's minor version compatibility table).</summary>
    private static string DriverBranch(int cudaMajor) => cudaMajor switch
    {
        11 => " to R450 (450.80.02) or newer",
        12 => " to R525 or newer",
        13 => " to R580 or newer",
        _ => string.Create(CultureInfo.InvariantCulture, $" to one that supports CUDA {cudaMajor}"),
    };

    private static string Text((int Major, int Minor) version) => string.Create(CultureInfo.InvariantCulture, $"{version.Major}.{version.Minor}");
}
