using System.Globalization;
using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>
/// The GPU had not enough free memory (CUDA_ERROR_OUT_OF_MEMORY). The message gives the request and the device's
/// free and total memory at the time of the failure. Not sticky: later allocations may succeed.
/// </summary>
public sealed class CudaOutOfMemoryException : CudaException
{
    /// <summary>Bytes requested, or -1 when the failing call was not an allocation of known size.</summary>
    public long RequestedBytes { get; }

    /// <summary>Free device memory when the failure happened, or -1 when it could not be read.</summary>
    public long FreeBytes { get; }

    /// <summary>Total device memory, or -1 when it could not be read.</summary>
    public long TotalBytes { get; }

    internal CudaOutOfMemoryException(string expression)
        : this(expression, -1, null)
    {
    }

    private CudaOutOfMemoryException(string expression, long requestedBytes, CudaDevice? device)
        : this(expression, requestedBytes, device, QueryMemory())
    {
    }

    private CudaOutOfMemoryException(string expression, long requestedBytes, CudaDevice? device, (long Free, long Total) memory)
        : base(FormatMessage(expression, requestedBytes, device, memory), CudaResult.OutOfMemory, expression)
    {
        RequestedBytes = requestedBytes;
        FreeBytes = memory.Free;
        TotalBytes = memory.Total;
    }

    /// <summary>For a failed allocation of <paramref name="requestedBytes"/> on <paramref name="device"/> (its context current).</summary>
    internal static CudaOutOfMemoryException ForAllocation(CudaDevice device, long requestedBytes, string expression) =>
        new(expression, requestedBytes, device);

    private static (long, long) QueryMemory()
    {
        try
        {
            return CudaDriver.cuMemGetInfo_v2(out nuint free, out nuint total) == CudaResult.Success ? ((long)free, (long)total) : (-1, -1);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException or CudaUnavailableException)
        {
            return (-1, -1);
        }
    }

    private static string FormatMessage(string expression, long requested, CudaDevice? device, (long Free, long Total) memory)
    {
        string where = device is null ? "the GPU" : $"device {device.Ordinal} ({device.Name})";
        string what = requested >= 0
            ? $"CUDA out of memory: tried to allocate {FormatBytes(requested)} ({requested.ToString(CultureInfo.InvariantCulture)} bytes) on {where}"
            : $"CUDA out of memory on {where} in {expression}";
        string state = memory.Free >= 0
            ? $"; {FormatBytes(memory.Free)} free of {FormatBytes(memory.Total)} total."
            : ".";
        return what + state + " Fix: use a smaller batch or sequence length, Dispose() CudaTensor objects no longer needed, " +
               "release memory cached by other frameworks in this process (e.g. torch.cuda.empty_cache()), " +
               "or stop other processes using the GPU (see nvidia-smi).";
    }

    internal static string FormatBytes(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        double value = bytes;
        int unit = 0;
        while (Math.Abs(value) >= 1024 && unit < units.Length - 1)
        {
            value /= 1024;
            unit++;
        }
        return unit == 0
            ? string.Create(CultureInfo.InvariantCulture, $"{bytes} B")
            : string.Create(CultureInfo.InvariantCulture, $"{value:0.00} {units[unit]}");
    }
}
