using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>
/// One device allocation (cuMemAlloc_v2), freed on <see cref="Dispose"/> or by the handle's finalizer.
/// Zero bytes is allowed: no driver call, pointer 0. A failed allocation throws <see cref="CudaOutOfMemoryException"/>
/// with the request and the device's free/total memory.
/// </summary>
internal sealed class DeviceMemory : IDisposable
{
    private readonly DeviceMemoryHandle? _handle;

    private DeviceMemory(CudaDevice device, long byteLength, DeviceMemoryHandle? handle)
    {
        Device = device;
        ByteLength = byteLength;
        _handle = handle;
    }

    /// <summary>The device the memory lives on.</summary>
    public CudaDevice Device { get; }

    /// <summary>Size of the allocation in bytes.</summary>
    public long ByteLength { get; }

    /// <summary>The device address (CUdeviceptr); 0 for a zero-byte allocation.</summary>
    public ulong Address
    {
        get
        {
            if (_handle is null)
                return 0;
            ObjectDisposedException.ThrowIf(_handle.IsClosed, this);
            return _handle.Address;
        }
    }

    /// <summary>The device address as a pointer-sized integer.</summary>
    public nint Pointer => (nint)Address;

    /// <summary>True once disposed.</summary>
    public bool IsDisposed => _handle?.IsClosed ?? false;

    /// <summary>Allocates <paramref name="byteLength"/> bytes on the default device (contents undefined).</summary>
    public static DeviceMemory Allocate(long byteLength) => Allocate(CudaDevice.Default, byteLength);

    /// <summary>Allocates <paramref name="byteLength"/> bytes on <paramref name="device"/> (contents undefined).</summary>
    public static DeviceMemory Allocate(CudaDevice device, long byteLength)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentOutOfRangeException.ThrowIfNegative(byteLength);
        if (byteLength == 0)
            return new DeviceMemory(device, 0, null);
        device.MakeCurrent();
        var handle = new DeviceMemoryHandle(device.Context);
        CudaResult result = CudaDriver.cuMemAlloc_v2(out ulong address, (nuint)byteLength);
        if (result == CudaResult.OutOfMemory)
            throw CudaOutOfMemoryException.ForAllocation(device, byteLength, $"cuMemAlloc_v2({byteLength})");
        CudaException.ThrowIfFailed(result, $"cuMemAlloc_v2({byteLength})");
        handle.Attach((nint)address);
        return new DeviceMemory(device, byteLength, handle);
    }

    /// <summary>Frees the memory (the driver waits for work using it to finish first).</summary>
    public void Dispose() => _handle?.Dispose();
}
