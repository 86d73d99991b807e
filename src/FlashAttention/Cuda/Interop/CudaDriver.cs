using System.Runtime.InteropServices;

namespace FlashAttn.Cuda.Interop;

/// <summary>
/// CUDA Driver API imports (libcuda.so.1 / nvcuda.dll, found by <see cref="NativeLibraryResolver"/>).
/// The versioned <c>_v2</c> entry points are the ones cuda.h maps the plain names to; CUdeviceptr is a 64-bit
/// unsigned integer (<see cref="ulong"/>), CUcontext/CUmodule/CUfunction/CUstream/CUevent are opaque pointers (<see cref="nint"/>),
/// CUdevice is an int. Every result must be checked (<see cref="CudaException.ThrowIfFailed"/>).
/// </summary>
internal static unsafe partial class CudaDriver
{
    internal const string Library = NativeLibraryResolver.CudaLogicalName;

    static CudaDriver() => NativeLibraryResolver.EnsureRegistered();

    // Initialisation and version
    [LibraryImport(Library)] internal static partial CudaResult cuInit(uint flags);
    [LibraryImport(Library)] internal static partial CudaResult cuDriverGetVersion(out int driverVersion);

    // Devices
    [LibraryImport(Library)] internal static partial CudaResult cuDeviceGetCount(out int count);
    [LibraryImport(Library)] internal static partial CudaResult cuDeviceGet(out int device, int ordinal);
    [LibraryImport(Library)] internal static partial CudaResult cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(Library)] internal static partial CudaResult cuDeviceGetAttribute(out int value, CuDeviceAttribute attribute, int device);
    [LibraryImport(Library)] internal static partial CudaResult cuDeviceTotalMem_v2(out nuint bytes, int device);

    // Primary context (shared with the CUDA runtime, hence with libtorch)
    [LibraryImport(Library)] internal static partial CudaResult cuDevicePrimaryCtxRetain(out nint context, int device);
    [LibraryImport(Library)] internal static partial CudaResult cuDevicePrimaryCtxRelease_v2(int device);
    [LibraryImport(Library)] internal static partial CudaResult cuCtxSetCurrent(nint context);
    [LibraryImport(Library)] internal static partial CudaResult cuCtxGetCurrent(out nint context);
    [LibraryImport(Library)] internal static partial CudaResult cuCtxSynchronize();

    // Memory
    [LibraryImport(Library)] internal static partial CudaResult cuMemAlloc_v2(out ulong devicePointer, nuint byteSize);
    [LibraryImport(Library)] internal static partial CudaResult cuMemFree_v2(ulong devicePointer);
    [LibraryImport(Library)] internal static partial CudaResult cuMemcpyHtoD_v2(ulong destination, void* source, nuint byteCount);
    [LibraryImport(Library)] internal static partial CudaResult cuMemcpyDtoH_v2(void* destination, ulong source, nuint byteCount);
    [LibraryImport(Library)] internal static partial CudaResult cuMemcpyDtoD_v2(ulong destination, ulong source, nuint byteCount);
    [LibraryImport(Library)] internal static partial CudaResult cuMemcpyHtoDAsync_v2(ulong destination, void* source, nuint byteCount, nint stream);
    [LibraryImport(Library)] internal static partial CudaResult cuMemcpyDtoHAsync_v2(void* destination, ulong source, nuint byteCount, nint stream);
    [LibraryImport(Library)] internal static partial CudaResult cuMemcpyDtoDAsync_v2(ulong destination, ulong source, nuint byteCount, nint stream);
    [LibraryImport(Library)] internal static partial CudaResult cuMemsetD8_v2(ulong destination, byte value, nuint count);
    [LibraryImport(Library)] internal static partial CudaResult cuMemsetD32Async(ulong destination, uint value, nuint count, nint stream);
    [LibraryImport(Library)] internal static partial CudaResult cuMemsetD8Async(ulong destination, byte value, nuint count, nint stream);
    [LibraryImport(Library)] internal static partial CudaResult cuMemGetInfo_v2(out nuint free, out nuint total);
    [LibraryImport(Library)] internal static partial CudaResult cuPointerGetAttribute(void* data, CuPointerAttribute attribute, ulong pointer);

    // Modules and kernels
    [LibraryImport(Library)] internal static partial CudaResult cuModuleLoadData(out nint module, void* image);
    [LibraryImport(Library)] internal static partial CudaResult cuModuleUnload(nint module);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    internal static partial CudaResult cuModuleGetFunction(out nint function, nint module, string name);
    [LibraryImport(Library)] internal static partial CudaResult cuFuncSetAttribute(nint function, CuFunctionAttribute attribute, int value);
    [LibraryImport(Library)] internal static partial CudaResult cuFuncGetAttribute(out int value, CuFunctionAttribute attribute, nint function);
    [LibraryImport(Library)]
    internal static partial CudaResult cuLaunchKernel(nint function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
        uint sharedMemBytes, nint stream, void** kernelParams, void** extra);

    // Streams and events
    [LibraryImport(Library)] internal static partial CudaResult cuStreamCreate(out nint stream, uint flags);
    [LibraryImport(Library)] internal static partial CudaResult cuStreamDestroy_v2(nint stream);
    [LibraryImport(Library)] internal static partial CudaResult cuStreamSynchronize(nint stream);
    [LibraryImport(Library)] internal static partial CudaResult cuEventCreate(out nint @event, uint flags);
    [LibraryImport(Library)] internal static partial CudaResult cuEventDestroy_v2(nint @event);
    [LibraryImport(Library)] internal static partial CudaResult cuEventRecord(nint @event, nint stream);
    [LibraryImport(Library)] internal static partial CudaResult cuEventSynchronize(nint @event);
    // The unversioned entry point: exported by every driver since CUDA 4 (cuEventElapsedTime_v2 needs a 12.8+ driver).
    [LibraryImport(Library)] internal static partial CudaResult cuEventElapsedTime(out float milliseconds, nint start, nint end);

    // Errors: the strings are static, owned by the driver.
    [LibraryImport(Library)] internal static partial CudaResult cuGetErrorName(CudaResult error, out nint name);
    [LibraryImport(Library)] internal static partial CudaResult cuGetErrorString(CudaResult error, out nint description);
}
