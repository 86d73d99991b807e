using FlashAttn.Cuda;

namespace FlashAttn.Tests.Properties;

/// <summary>
/// A case's host views on the GPU with the same layout: each host buffer (NaN in the gaps included) is uploaded once, and
/// every view becomes a strided <see cref="CudaTensor{T}.View(nint, ReadOnlySpan{nint}, ReadOnlySpan{nint})"/> at the same
/// offset, so packed views share one device buffer as they share one host buffer.
/// </summary>
internal sealed class DeviceViews<T> : IDisposable where T : unmanaged
{
    private readonly Dictionary<T[], CudaTensor<T>> _buffers = new(ReferenceEqualityComparer.Instance);
    private readonly List<CudaTensor<T>> _owned = [];
    private readonly List<IDisposable> _others = [];

    public CudaTensor<T> Of(HostView<T> view)
    {
        if (view.Lengths.Contains(0))
            return Own(CudaTensor<T>.Allocate(view.Lengths));
        if (!_buffers.TryGetValue(view.Buffer, out var buffer))
        {
            buffer = Own(CudaTensor<T>.FromHost(Tensor.Create(view.Buffer, [view.Buffer.Length])));
            _buffers.Add(view.Buffer, buffer);
        }
        return Own(CudaTensor<T>.View(buffer.DevicePointer + (nint)view.Start * CudaTensor<T>.ElementSize, view.Lengths, view.Strides));
    }

    /// <summary>A dense device copy of a host tensor (forward's LSE, handed to backward).</summary>
    public CudaTensor<TOther> Dense<TOther>(Tensor<TOther> host) where TOther : unmanaged
    {
        var tensor = CudaTensor<TOther>.FromHost(host);
        _others.Add(tensor);
        return tensor;
    }

    private CudaTensor<T> Own(CudaTensor<T> tensor)
    {
        _owned.Add(tensor);
        return tensor;
    }

    public void Dispose()
    {
        // Views first, then the buffers they point into.
        foreach (var tensor in Enumerable.Reverse(_owned)) tensor.Dispose();
        foreach (var other in _others) other.Dispose();
    }
}
