namespace FlashAttn.Cuda.Interop;

/// <summary><c>CUdevice_attribute</c> values used by this library.</summary>
internal enum CuDeviceAttribute
{
    MaxThreadsPerBlock = 1,
    MaxSharedMemoryPerBlock = 8,
    WarpSize = 10,
    MultiprocessorCount = 16,
    L2CacheSize = 38,
    MaxThreadsPerMultiprocessor = 39,
    ComputeCapabilityMajor = 75,
    ComputeCapabilityMinor = 76,
    MaxSharedMemoryPerMultiprocessor = 81,
    MaxRegistersPerMultiprocessor = 82,
    MaxSharedMemoryPerBlockOptin = 97,
}

/// <summary><c>CUfunction_attribute</c> values.</summary>
internal enum CuFunctionAttribute
{
    MaxThreadsPerBlock = 0,
    SharedSizeBytes = 1,
    ConstSizeBytes = 2,
    LocalSizeBytes = 3,
    NumRegs = 4,
    PtxVersion = 5,
    BinaryVersion = 6,
    CacheModeCa = 7,
    MaxDynamicSharedSizeBytes = 8,
    PreferredSharedMemoryCarveout = 9,
}

/// <summary><c>CUpointer_attribute</c> values.</summary>
internal enum CuPointerAttribute
{
    Context = 1,
    MemoryType = 2,
    DevicePointer = 3,
    HostPointer = 4,
    IsManaged = 8,
    DeviceOrdinal = 9,
    RangeStartAddress = 11,
    RangeSize = 12,
    Mapped = 13,
}

/// <summary><c>CUmemorytype</c> values (returned for <see cref="CuPointerAttribute.MemoryType"/>).</summary>
internal enum CuMemoryType : uint
{
    Host = 1,
    Device = 2,
    Array = 3,
    Unified = 4,
}

/// <summary>Flags of cuStreamCreate and cuEventCreate.</summary>
internal static class CuFlags
{
    /// <summary>CU_STREAM_NON_BLOCKING: no implicit synchronisation with the legacy default stream.</summary>
    public const uint StreamNonBlocking = 0x1;
    /// <summary>CU_EVENT_DEFAULT.</summary>
    public const uint EventDefault = 0x0;
    /// <summary>CU_EVENT_BLOCKING_SYNC.</summary>
    public const uint EventBlockingSync = 0x1;
    /// <summary>CU_EVENT_DISABLE_TIMING.</summary>
    public const uint EventDisableTiming = 0x2;
}
