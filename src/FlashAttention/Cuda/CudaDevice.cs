using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text;
using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>
/// A GPU ready for our kernels: the driver initialised, the device's PRIMARY context retained (the context the CUDA
/// runtime, hence libtorch, uses too, so device pointers from either side are valid in both), NVRTC present, a compute
/// capability of 8.0 or newer, and versions that work together (NVRTC 11.8 or newer and new enough for the GPU's
/// architecture, a driver of at least NVRTC's CUDA major version). <see cref="Default"/> is device 0, or the ordinal in the
/// FLASHATTN_DEVICE environment variable (ordinals count the devices visible through CUDA_VISIBLE_DEVICES).
/// </summary>
/// <remarks>
/// A CUDA context is current per thread, so every sequence of driver calls starts with <see cref="MakeCurrent"/>;
/// it is cheap. The primary context is retained for the life of the process and never released.
/// </remarks>
public sealed class CudaDevice
{
    /// <summary>The environment variable that picks the default device's ordinal.</summary>
    public const string DeviceEnvironmentVariable = "FLASHATTN_DEVICE";

    private static readonly Lock s_lock = new();
    private static CudaDevice? s_default;

    /// <summary>Device ordinal (as numbered by the driver, after CUDA_VISIBLE_DEVICES).</summary>
    public int Ordinal { get; }

    /// <summary>Marketing name, e.g. "NVIDIA H100 80GB HBM3".</summary>
    public string Name { get; }

    /// <summary>Compute capability, e.g. (9, 0) for Hopper.</summary>
    public (int Major, int Minor) ComputeCapability { get; }

    /// <summary>
    /// The NVRTC real architecture to compile for: "sm_80", "sm_86", "sm_89", "sm_90a" for 9.0 (the 'a' suffix
    /// enables wgmma and the other Hopper-only instructions), "sm_100" for 10.0 and so on.
    /// </summary>
    public string Architecture { get; }

    /// <summary>The forward kernel family that calls without dropout take on this device: "sm90-wgmma"
    /// (Kernels/flash_fwd_sm90.cu) on sm_90 unless FLASHATTN_FWD_SM90=0, otherwise "fa2" (Kernels/flash_fwd.cu, which also
    /// takes every call with dropout).</summary>
    public string ForwardKernelFamily =>
        ForwardVariant.UseHopper && ForwardVariant.HopperCovers(Architecture, 64, false) ? "sm90-wgmma" : "fa2";

    /// <summary>The backward kernel family that calls at head dims up to 128 without dropout take on this device: "sm90-wgmma"
    /// (Kernels/flash_bwd_sm90.cu) on sm_90 unless FLASHATTN_BWD_SM90=0, otherwise "fa2" (which also takes dropout, narrow
    /// windows at head dim 64 and head dims above 128).</summary>
    public string BackwardKernelFamily =>
        BackwardVariant.UseHopper && BackwardVariant.HopperCovers(Architecture, 128, false, false) ? "sm90-wgmma" : "fa2";

    /// <summary>Number of streaming multiprocessors.</summary>
    public int MultiprocessorCount { get; }

    /// <summary>Total device memory in bytes.</summary>
    public long TotalMemoryBytes { get; }

    /// <summary>The largest shared memory a block may use after opting in (cuFuncSetAttribute), in bytes (232448 on H100).</summary>
    public int MaxSharedMemoryPerBlockOptin { get; }

    /// <summary>The driver's CUDA version, encoded as 1000 * major + 10 * minor (13000 for CUDA 13.0).</summary>
    public int DriverVersion { get; }

    /// <summary>The NVRTC version in use.</summary>
    public (int Major, int Minor) NvrtcVersion { get; }

    /// <summary>The primary context (CUcontext).</summary>
    internal nint Context { get; }

    private CudaDevice(int ordinal, string name, (int, int) cc, int sms, long totalMemory, int smemOptin, int driverVersion,
        (int, int) nvrtcVersion, nint context)
    {
        Ordinal = ordinal;
        Name = name;
        ComputeCapability = cc;
        Architecture = ArchitectureFor(cc.Item1, cc.Item2);
        MultiprocessorCount = sms;
        TotalMemoryBytes = totalMemory;
        MaxSharedMemoryPerBlockOptin = smemOptin;
        DriverVersion = driverVersion;
        NvrtcVersion = nvrtcVersion;
        Context = context;
    }

    /// <summary>The default device; throws <see cref="CudaUnavailableException"/> (with the cause and the fix) when there is none.</summary>
    public static CudaDevice Default =>
        TryGetDefault(out CudaDevice? device, out Exception? error) ? device : throw AsUnavailable(error!);

    /// <summary>
    /// Gets the default device without throwing. On failure <paramref name="reason"/> says what is missing or too old (driver,
    /// GPU, NVRTC) and how to fix it. Success is remembered; a failure is retried on the next call.
    /// </summary>
    public static bool TryGetDefault([NotNullWhen(true)] out CudaDevice? device, out string reason)
    {
        bool ok = TryGetDefault(out device, out Exception? error);
        reason = ok ? "" : error!.Message;
        return ok;
    }

    private static bool TryGetDefault([NotNullWhen(true)] out CudaDevice? device, out Exception? error)
    {
        device = Volatile.Read(ref s_default);
        error = null;
        if (device is not null)
            return true;
        lock (s_lock)
        {
            device = s_default;
            if (device is not null)
                return true;
            try
            {
                device = Open(SelectOrdinal());
                Volatile.Write(ref s_default, device);
                return true;
            }
            catch (Exception e) when (e is CudaUnavailableException or CudaException or NvrtcException
                                          or DllNotFoundException or EntryPointNotFoundException)
            {
                error = e;
                return false;
            }
        }
    }

    private static CudaUnavailableException AsUnavailable(Exception error) =>
        error as CudaUnavailableException ?? new CudaUnavailableException(error.Message, error);

    /// <summary>Makes this device's primary context current on the calling thread.</summary>
    public void MakeCurrent() => CudaException.ThrowIfFailed(CudaDriver.cuCtxSetCurrent(Context));

    /// <summary>Waits for all work on the device (every stream of the context). For tests and benchmarks; the library never calls it.</summary>
    public void Synchronize()
    {
        MakeCurrent();
        CudaException.ThrowIfFailed(CudaDriver.cuCtxSynchronize());
    }

    /// <summary>Free and total device memory now, in bytes.</summary>
    public (long FreeBytes, long TotalBytes) GetMemoryInfo()
    {
        MakeCurrent();
        CudaException.ThrowIfFailed(CudaDriver.cuMemGetInfo_v2(out nuint free, out nuint total));
        return ((long)free, (long)total);
    }

    /// <summary>A one-line description: name, ordinal, architecture, SMs, memory, driver and NVRTC versions.</summary>
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{Name} (device {Ordinal}, {Architecture}, {MultiprocessorCount} SMs, {CudaOutOfMemoryException.FormatBytes(TotalMemoryBytes)}, " +
        $"driver CUDA {DriverVersion / 1000}.{DriverVersion % 1000 / 10}, NVRTC {NvrtcVersion.Major}.{NvrtcVersion.Minor})");

    /// <summary>The NVRTC architecture for a compute capability (see <see cref="Architecture"/>).</summary>
    internal static string ArchitectureFor(int major, int minor) =>
        (major, minor) == (9, 0) ? "sm_90a" : string.Create(CultureInfo.InvariantCulture, $"sm_{major}{minor}");

    private static int SelectOrdinal()
    {
        string? text = Environment.GetEnvironmentVariable(DeviceEnvironmentVariable);
        if (string.IsNullOrWhiteSpace(text))
            return 0;
        if (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int ordinal))
            throw new CudaUnavailableException(
                $"{DeviceEnvironmentVariable}='{text}' is not a device ordinal. Fix: set it to 0, 1, ... (see nvidia-smi) or unset it.");
        return ordinal;
    }

    private static unsafe CudaDevice Open(int ordinal)
    {
        NativeLibraryResolver.EnsureRegistered();
        NativeLibraryResolver.Load(CudaLibraryKind.Driver);

        CudaResult init = CudaDriver.cuInit(0);
        if (init != CudaResult.Success)
            throw new CudaUnavailableException(InitFailure(init));
        CudaException.ThrowIfFailed(CudaDriver.cuDriverGetVersion(out int driverVersion));
        CudaException.ThrowIfFailed(CudaDriver.cuDeviceGetCount(out int count));
        if (count == 0)
            throw new CudaUnavailableException(
                "The NVIDIA driver is installed but reports no CUDA device. Fix: check nvidia-smi and CUDA_VISIBLE_DEVICES.");
        if (ordinal < 0 || ordinal >= count)
            throw new CudaUnavailableException(
                $"{DeviceEnvironmentVariable}={ordinal} but only {count} CUDA device(s) are visible (ordinals 0..{count - 1}). " +
                $"Fix: set {DeviceEnvironmentVariable} to a valid ordinal or unset it.");

        CudaException.ThrowIfFailed(CudaDriver.cuDeviceGet(out int device, ordinal));
        byte* nameBuffer = stackalloc byte[256];
        CudaException.ThrowIfFailed(CudaDriver.cuDeviceGetName(nameBuffer, 256, device));
        string name = Encoding.UTF8.GetString(nameBuffer, new ReadOnlySpan<byte>(nameBuffer, 256).IndexOf((byte)0) is int n and >= 0 ? n : 256);
        int major = Attribute(CuDeviceAttribute.ComputeCapabilityMajor, device);
        int minor = Attribute(CuDeviceAttribute.ComputeCapabilityMinor, device);
        string gpu = $"{name} (device {ordinal})";
        // The GPU first, so an old GPU is reported as such even where NVRTC is missing too.
        if (CudaRequirements.CheckComputeCapability((major, minor), gpu) is { } oldGpu)
            throw new CudaUnavailableException(oldGpu);
        int sms = Attribute(CuDeviceAttribute.MultiprocessorCount, device);
        int smemOptin = Attribute(CuDeviceAttribute.MaxSharedMemoryPerBlockOptin, device);
        CudaException.ThrowIfFailed(CudaDriver.cuDeviceTotalMem_v2(out nuint totalMemory, device));

        // NVRTC is part of what "CUDA available" means: without it no kernel can be built.
        var nvrtcVersion = NvrtcCompiler.Version;
        if (CudaRequirements.Check(driverVersion, nvrtcVersion, (major, minor), gpu) is { } mismatch)
            throw new CudaUnavailableException(mismatch);

        CudaException.ThrowIfFailed(CudaDriver.cuDevicePrimaryCtxRetain(out nint context, device));
        CudaException.ThrowIfFailed(CudaDriver.cuCtxSetCurrent(context));
        return new CudaDevice(ordinal, name, (major, minor), sms, (long)totalMemory, smemOptin, driverVersion, nvrtcVersion, context);
    }

    private static int Attribute(CuDeviceAttribute attribute, int device)
    {
        CudaException.ThrowIfFailed(CudaDriver.cuDeviceGetAttribute(out int value, attribute, device), $"cuDeviceGetAttribute({attribute})");
        return value;
    }

    private static string InitFailure(CudaResult result)
    {
        string loadedFrom = NativeLibraryResolver.LoadedFrom(CudaLibraryKind.Driver) ?? "libcuda";
        string described = CudaException.Describe(result);
        return result switch
        {
            CudaResult.NoDevice =>
                $"cuInit found no CUDA-capable GPU ({described}). Fix: check nvidia-smi; if CUDA_VISIBLE_DEVICES is set, make sure it lists a GPU.",
            CudaResult.StubLibrary =>
                $"The loaded {loadedFrom} is the CUDA toolkit's link stub, not the driver ({described}). " +
                "Fix: install the NVIDIA driver and remove the toolkit's lib64/stubs folder from LD_LIBRARY_PATH, or set FLASHATTN_CUDA_LIBRARY to the real libcuda.so.1.",
            CudaResult.SystemDriverMismatch =>
                $"The NVIDIA user-mode driver ({loadedFrom}) and kernel module versions differ ({described}). Fix: reboot, or reinstall the driver.",
            CudaResult.DeviceUnavailable =>
                $"The GPU is busy or unavailable ({described}). Fix: check the compute mode (nvidia-smi -q | grep 'Compute Mode') and other processes.",
            _ => $"cuInit(0) failed ({described}), using {loadedFrom}. Fix: check that the NVIDIA driver works (nvidia-smi).",
        };
    }
}
