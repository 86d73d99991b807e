using System.Globalization;
using System.Numerics.Tensors;
using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>
/// A tensor in GPU memory: a device pointer with <see cref="Lengths"/> and <see cref="Strides"/> (in elements), the
/// same shape model as System.Numerics.Tensors. Either owns its memory (<see cref="Allocate(ReadOnlySpan{nint})"/>,
/// <see cref="FromHost(ReadOnlyTensorSpan{T})"/>), freed on <see cref="Dispose"/>, or is a non-owning
/// <see cref="View(nint, ReadOnlySpan{nint}, ReadOnlySpan{nint})"/> over memory another framework allocated (e.g. a
/// libtorch tensor's data pointer), which <see cref="Dispose"/> leaves alone.
/// </summary>
/// <typeparam name="T">The element type: float, <see cref="Half"/> or <see cref="BFloat16"/> for attention operands;
/// any unmanaged type (e.g. int for cumulative sequence lengths) for other buffers.</typeparam>
/// <remarks>
/// Host copies (<see cref="ToHost"/>, <see cref="CopyFromHost"/>, <see cref="Fill"/>) return when the copy is done.
/// Without a stream they run on the legacy default stream, so they wait for earlier work on it (and on every blocking
/// stream) but NOT for work on non-blocking streams: pass that stream, or synchronise it first.
/// </remarks>
public sealed unsafe class CudaTensor<T> : IDisposable where T : unmanaged
{
    private readonly nint[] _lengths;
    private readonly nint[] _strides;
    private readonly DeviceMemory? _memory;
    private readonly nint _pointer;
    private readonly long _extent;
    private bool _disposed;

    private CudaTensor(CudaDevice device, nint pointer, nint[] lengths, nint[] strides, DeviceMemory? memory)
    {
        Device = device;
        _pointer = pointer;
        _lengths = lengths;
        _strides = strides;
        _memory = memory;
        ElementCount = TensorLayout.ElementCount(lengths);
        _extent = TensorLayout.Extent(lengths, strides);
    }

    /// <summary>The device holding the memory.</summary>
    public CudaDevice Device { get; }

    /// <summary>Length of each dimension.</summary>
    public ReadOnlySpan<nint> Lengths => _lengths;

    /// <summary>Stride of each dimension, in elements.</summary>
    public ReadOnlySpan<nint> Strides => _strides;

    /// <summary>Number of dimensions.</summary>
    public int Rank => _lengths.Length;

    /// <summary>Number of elements (product of the lengths).</summary>
    public long ElementCount { get; }

    /// <summary>Bytes per element.</summary>
    public static int ElementSize => sizeof(T);

    /// <summary>Bytes from the first to the last element (inclusive): the memory the layout spans.</summary>
    public long ByteLength => _extent * sizeof(T);

    /// <summary>True for a non-owning view over memory allocated elsewhere.</summary>
    public bool IsView => _memory is null;

    /// <summary>True when the layout is dense row-major (the layout <see cref="Allocate(ReadOnlySpan{nint})"/> makes).</summary>
    public bool IsRowMajor => TensorLayout.IsRowMajor(_lengths, _strides);

    /// <summary>True once <see cref="Dispose"/> has run.</summary>
    public bool IsDisposed => _disposed;

    /// <summary>The device address of element [0, 0, ...]; 0 for an empty owned tensor.</summary>
    public nint DevicePointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            return _pointer;
        }
    }

    /// <summary>Allocates a dense row-major tensor on the default device (contents undefined).</summary>
    public static CudaTensor<T> Allocate(ReadOnlySpan<nint> lengths) => Allocate(lengths, CudaDevice.Default);

    /// <summary>Allocates a dense row-major tensor on <paramref name="device"/> (contents undefined).</summary>
    public static CudaTensor<T> Allocate(ReadOnlySpan<nint> lengths, CudaDevice device)
    {
        ArgumentNullException.ThrowIfNull(device);
        nint[] strides = TensorLayout.RowMajorStrides(lengths);
        TensorLayout.Validate(lengths, strides, nameof(lengths), nameof(lengths));
        long bytes = checked(TensorLayout.ElementCount(lengths) * sizeof(T));
        var memory = DeviceMemory.Allocate(device, bytes);
        return new CudaTensor<T>(device, memory.Pointer, lengths.ToArray(), strides, memory);
    }

    /// <summary>Allocates a dense tensor of the host tensor's shape and copies it over; the host tensor may be strided.</summary>
    public static CudaTensor<T> FromHost(ReadOnlyTensorSpan<T> host) => FromHost(host, CudaDevice.Default);

    /// <summary>Allocates a dense tensor of the host tensor's shape on <paramref name="device"/> and copies it over.</summary>
    public static CudaTensor<T> FromHost(ReadOnlyTensorSpan<T> host, CudaDevice device)
    {
        var tensor = Allocate(host.Lengths, device);
        try
        {
            tensor.CopyFromHost(host);
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    /// <summary>A non-owning dense row-major view over device memory allocated elsewhere, on the default device.</summary>
    public static CudaTensor<T> View(nint devicePointer, ReadOnlySpan<nint> lengths) =>
        View(devicePointer, lengths, TensorLayout.RowMajorStrides(lengths));

    /// <summary>
    /// A non-owning strided view over device memory allocated elsewhere (e.g. a libtorch tensor: its data pointer,
    /// sizes and strides), on the default device. <see cref="Dispose"/> does not free the memory; the owner must keep
    /// it alive while the view is used. The pointer is checked with the driver: it must be device (or managed) memory
    /// of this device, aligned to the element size.
    /// </summary>
    public static CudaTensor<T> View(nint devicePointer, ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides)
    {
        TensorLayout.Validate(lengths, strides, nameof(lengths), nameof(strides));
        long extent = TensorLayout.Extent(lengths, strides);
        if (extent > 0 && devicePointer == 0)
            throw new ArgumentException("The device pointer is null but the view has elements.", nameof(devicePointer));
        int alignment = Math.Min(sizeof(T), 16);
        if ((alignment & (alignment - 1)) == 0 && devicePointer % alignment != 0)
            throw new ArgumentException(
                $"The device pointer 0x{devicePointer:x} is not aligned to the {sizeof(T)}-byte element size.", nameof(devicePointer));
        var device = CudaDevice.Default;
        if (devicePointer != 0)
            CheckDevicePointer(device, devicePointer);
        return new CudaTensor<T>(device, devicePointer, lengths.ToArray(), strides.ToArray(), null);
    }

    private static void CheckDevicePointer(CudaDevice device, nint pointer)
    {
        device.MakeCurrent();
        uint memoryType;
        CudaResult result = CudaDriver.cuPointerGetAttribute(&memoryType, CuPointerAttribute.MemoryType, (ulong)pointer);
        if (result == CudaResult.InvalidValue)
            throw new ArgumentException(
                $"0x{pointer:x} is not a CUDA allocation the driver knows (cuPointerGetAttribute: {CudaException.Describe(result)}).",
                nameof(pointer));
        if (result != CudaResult.Success)
            return; // cannot be checked here; the kernel would fault on a bad pointer
        if ((CuMemoryType)memoryType == CuMemoryType.Host)
            throw new ArgumentException($"0x{pointer:x} points to host memory; a device pointer is required.", nameof(pointer));
        int ordinal;
        if (CudaDriver.cuPointerGetAttribute(&ordinal, CuPointerAttribute.DeviceOrdinal, (ulong)pointer) == CudaResult.Success
            && ordinal != device.Ordinal)
            throw new ArgumentException(
                $"0x{pointer:x} lives on device {ordinal}, but the CUDA path runs on device {device.Ordinal} (set {CudaDevice.DeviceEnvironmentVariable}).",
                nameof(pointer));
    }

    /// <summary>
    /// Copies a host tensor of the same shape into this one. The host tensor may be strided (it goes through a dense
    /// staging copy); a strided destination view is updated element by element, leaving the memory between its
    /// elements as it was.
    /// </summary>
    public void CopyFromHost(ReadOnlyTensorSpan<T> host, CudaStream? stream = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (!host.Lengths.SequenceEqual(_lengths))
            throw new ArgumentException(
                $"The host tensor's shape [{string.Join(", ", host.Lengths.ToArray())}] differs from this tensor's [{string.Join(", ", _lengths)}].",
                nameof(host));
        if (ElementCount == 0)
            return;

        T[]? staging = null;
        if (!TensorLayout.IsRowMajor(host.Lengths, host.Strides))
        {
            staging = new T[checked((int)ElementCount)];
            host.FlattenTo(staging);
        }

        fixed (T* hostDense = host)
        fixed (T* staged = staging)
        {
            T* dense = staging is null ? hostDense : staged;
            if (IsRowMajor)
            {
                HostToDevice(dense, (ulong)_pointer, ElementCount * sizeof(T), stream);
                return;
            }
            // Strided destination: read the spanned memory, overwrite this view's elements, write it back.
            var spanned = new T[checked((int)_extent)];
            fixed (T* spannedPtr = spanned)
            {
                DeviceToHost((ulong)_pointer, spannedPtr, _extent * sizeof(T), stream);
                TensorLayout.Scatter(new ReadOnlySpan<T>(dense, checked((int)ElementCount)), _lengths, _strides, spanned);
                HostToDevice(spannedPtr, (ulong)_pointer, _extent * sizeof(T), stream);
            }
        }
    }

    /// <summary>Copies the tensor into a new dense row-major host tensor of the same shape.</summary>
    public Tensor<T> ToHost(CudaStream? stream = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (ElementCount > Array.MaxLength || _extent > Array.MaxLength)
            throw new InvalidOperationException($"{ElementCount} elements do not fit in one host array.");
        var result = new T[ElementCount];
        if (ElementCount > 0)
        {
            if (IsRowMajor)
            {
                fixed (T* p = result)
                    DeviceToHost((ulong)_pointer, p, ElementCount * sizeof(T), stream);
            }
            else
            {
                var spanned = new T[_extent];
                fixed (T* p = spanned)
                    DeviceToHost((ulong)_pointer, p, _extent * sizeof(T), stream);
                TensorLayout.Gather<T>(spanned, _lengths, _strides, result);
            }
        }
        return Tensor.Create(result, _lengths);
    }

    /// <summary>
    /// Sets every byte of the tensor to <paramref name="value"/> (cuMemsetD8) - e.g. 0xFF, a NaN pattern for float,
    /// half and bfloat16, to poison outputs in tests. The layout must have no gaps.
    /// </summary>
    public void Fill(byte value)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_extent != ElementCount)
            throw new NotSupportedException("Fill needs a layout without gaps between elements; this view is strided.");
        if (ElementCount == 0)
            return;
        Device.MakeCurrent();
        CudaException.ThrowIfFailed(CudaDriver.cuMemsetD8_v2((ulong)_pointer, value, (nuint)(ElementCount * sizeof(T))));
    }

    /// <summary>Frees owned memory (waiting for work that uses it); for a view, only marks it disposed.</summary>
    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        _memory?.Dispose();
    }

    /// <inheritdoc />
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"CudaTensor<{typeof(T).Name}>[{string.Join(", ", _lengths)}] strides [{string.Join(", ", _strides)}] at 0x{_pointer:x}{(IsView ? " (view)" : "")}{(_disposed ? " (disposed)" : "")}");

    private void HostToDevice(T* source, ulong destination, long bytes, CudaStream? stream)
    {
        Device.MakeCurrent();
        if (stream is null || stream.IsLegacy)
        {
            CudaException.ThrowIfFailed(CudaDriver.cuMemcpyHtoD_v2(destination, source, (nuint)bytes));
            return;
        }
        CudaException.ThrowIfFailed(CudaDriver.cuMemcpyHtoDAsync_v2(destination, source, (nuint)bytes, stream.Handle));
        CudaException.ThrowIfFailed(CudaDriver.cuStreamSynchronize(stream.Handle));
    }

    private void DeviceToHost(ulong source, T* destination, long bytes, CudaStream? stream)
    {
        Device.MakeCurrent();
        if (stream is null || stream.IsLegacy)
        {
            CudaException.ThrowIfFailed(CudaDriver.cuMemcpyDtoH_v2(destination, source, (nuint)bytes));
            return;
        }
        CudaException.ThrowIfFailed(CudaDriver.cuMemcpyDtoHAsync_v2(destination, source, (nuint)bytes, stream.Handle));
        CudaException.ThrowIfFailed(CudaDriver.cuStreamSynchronize(stream.Handle));
    }
}
