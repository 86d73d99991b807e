using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>
/// One kernel (CUfunction) of a loaded module, from <see cref="ModuleCache.GetOrCompile"/>. Launches are asynchronous
/// on the given stream and checked; nothing here synchronises.
/// </summary>
internal sealed unsafe class CudaKernel
{
    /// <summary>Dynamic shared memory a kernel may use without opting in.</summary>
    public const int DefaultDynamicSharedLimit = 48 * 1024;

    private readonly CudaModuleHandle _module;
    private readonly Lock _lock = new();
    private volatile int _maxDynamicShared = DefaultDynamicSharedLimit;

    internal CudaKernel(CudaDevice device, CudaModuleHandle module, nint function, string name, string variantName, string cacheKey)
    {
        Device = device;
        _module = module;
        Function = function;
        Name = name;
        VariantName = variantName;
        CacheKey = cacheKey;
    }

    /// <summary>The device whose context holds the module.</summary>
    public CudaDevice Device { get; }

    /// <summary>The CUfunction handle.</summary>
    public nint Function { get; }

    /// <summary>The kernel's (extern "C") name.</summary>
    public string Name { get; }

    /// <summary>Set by the first launch, which <see cref="KernelUseLog"/> records.</summary>
    private bool _launched;

    /// <summary>The variant it was compiled as, e.g. flash_fwd_hdim128_bf16.</summary>
    public string VariantName { get; }

    /// <summary>The cubin cache key (hex SHA-256) of its module.</summary>
    public string CacheKey { get; }

    /// <summary>Registers per thread.</summary>
    public int Registers => Attribute(CuFunctionAttribute.NumRegs);

    /// <summary>Local memory per thread in bytes: non-zero means register spills (or local arrays).</summary>
    public int LocalBytes => Attribute(CuFunctionAttribute.LocalSizeBytes);

    /// <summary>Statically declared shared memory in bytes.</summary>
    public int StaticSharedBytes => Attribute(CuFunctionAttribute.SharedSizeBytes);

    /// <summary>The largest block this kernel can be launched with (limited by its register use).</summary>
    public int MaxThreadsPerBlock => Attribute(CuFunctionAttribute.MaxThreadsPerBlock);

    /// <summary>The dynamic shared memory limit currently set for the kernel (48 KiB unless raised).</summary>
    public int MaxDynamicSharedMemory => _maxDynamicShared;

    /// <summary>
    /// Raises the kernel's dynamic shared memory limit (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES) to at least
    /// <paramref name="bytes"/>. Only sizes above 48 KiB need it; the largest value set is remembered, so repeated
    /// calls cost nothing. <see cref="Launch{TParams}"/> calls it when needed.
    /// </summary>
    public void SetMaxDynamicSharedMemory(int bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        if (bytes <= _maxDynamicShared)
            return;
        lock (_lock)
        {
            if (bytes <= _maxDynamicShared)
                return;
            int available = Device.MaxSharedMemoryPerBlockOptin - StaticSharedBytes;
            if (bytes > available)
                throw new ArgumentOutOfRangeException(nameof(bytes),
                    $"{VariantName}/{Name} asks for {bytes} bytes of dynamic shared memory; {Device.Name} allows {available} " +
                    $"({Device.MaxSharedMemoryPerBlockOptin} per block minus {StaticSharedBytes} static).");
            Device.MakeCurrent();
            CudaResult result = CudaDriver.cuFuncSetAttribute(Function, CuFunctionAttribute.MaxDynamicSharedSizeBytes, bytes);
            if (result != CudaResult.Success)
                CudaException.ThrowIfFailed(result, $"cuFuncSetAttribute({VariantName}/{Name}, MAX_DYNAMIC_SHARED_SIZE_BYTES, {bytes})");
            _maxDynamicShared = bytes;
        }
    }

    /// <summary>
    /// Launches a kernel that takes one struct by value: kernelParams is a one-element array pointing at
    /// <paramref name="parameters"/>, which the driver copies before returning.
    /// </summary>
    public void Launch<TParams>(in TParams parameters, (uint X, uint Y, uint Z) grid, (uint X, uint Y, uint Z) block, int sharedBytes,
        CudaStream stream) where TParams : unmanaged
    {
        fixed (TParams* p = &parameters)
        {
            void* argument = p;
            Launch(&argument, grid, block, sharedBytes, stream);
        }
    }

    /// <summary>
    /// Launches with the driver's kernelParams convention: <paramref name="arguments"/>[i] points at the value of the
    /// i-th kernel parameter.
    /// </summary>
    public void Launch(void** arguments, (uint X, uint Y, uint Z) grid, (uint X, uint Y, uint Z) block, int sharedBytes, CudaStream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentOutOfRangeException.ThrowIfNegative(sharedBytes);
        if (grid.X == 0 || grid.Y == 0 || grid.Z == 0 || block.X == 0 || block.Y == 0 || block.Z == 0)
            throw new ArgumentOutOfRangeException(nameof(grid),
                $"{VariantName}/{Name}: grid ({grid.X}, {grid.Y}, {grid.Z}) and block ({block.X}, {block.Y}, {block.Z}) must have no zero dimension.");
        if (sharedBytes > _maxDynamicShared)
            SetMaxDynamicSharedMemory(sharedBytes);

        bool added = false;
        try
        {
            _module.DangerousAddRef(ref added); // the module cannot be unloaded during the launch
            Device.MakeCurrent();
            CudaResult result = CudaDriver.cuLaunchKernel(Function, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, (uint)sharedBytes,
                stream.Handle, arguments, null);
            if (result != CudaResult.Success)
                CudaException.ThrowIfFailed(result,
                    $"cuLaunchKernel({VariantName}/{Name}, grid ({grid.X}, {grid.Y}, {grid.Z}), block ({block.X}, {block.Y}, {block.Z}), {sharedBytes} B dynamic shared)");
            if (!_launched && !Interlocked.Exchange(ref _launched, true)) KernelUseLog.Record(VariantName, Name);
        }
        finally
        {
            if (added)
                _module.DangerousRelease();
        }
    }

    private int Attribute(CuFunctionAttribute attribute)
    {
        Device.MakeCurrent();
        CudaResult result = CudaDriver.cuFuncGetAttribute(out int value, attribute, Function);
        if (result != CudaResult.Success)
            CudaException.ThrowIfFailed(result, $"cuFuncGetAttribute({VariantName}/{Name}, {attribute})");
        return value;
    }

    /// <inheritdoc />
    public override string ToString() => $"{VariantName}/{Name}";
}
