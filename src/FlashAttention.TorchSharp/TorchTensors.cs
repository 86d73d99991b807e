using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using FlashAttn.Cuda;
using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// The bridge between torch tensors and our tensor types: data pointers, shapes and strides (in elements), zero-copy
/// System.Numerics.Tensors spans over CPU tensors and <see cref="CudaTensor{T}"/> views over CUDA tensors.
/// </summary>
internal static unsafe partial class TorchTensors
{
    /// <summary>libtorch's <c>Tensor::data_ptr()</c>, exported by TorchSharp's native library.</summary>
    [LibraryImport("LibTorchSharp")]
    private static partial nint THSTensor_data(nint handle);

    /// <summary>
    /// The address of element [0, 0, ...] of <paramref name="tensor"/>: storage base plus storage offset (libtorch's
    /// <c>Tensor::data_ptr()</c>). Exported by TorchSharp's native library; a host pointer for CPU tensors, a device
    /// pointer for CUDA tensors. (TorchSharp's managed <c>storage&lt;T&gt;()</c> cannot be used: it throws for bfloat16.)
    /// </summary>
    public static nint DataPointer(torch.Tensor tensor)
    {
        nint pointer = THSTensor_data(tensor.Handle);
        torch.CheckForErrors();
        return pointer;
    }

    public static nint[] Lengths(torch.Tensor tensor) => Array.ConvertAll(tensor.shape, length => checked((nint)length));

    public static nint[] Strides(torch.Tensor tensor) => Array.ConvertAll(tensor.stride(), stride => checked((nint)stride));

    /// <summary>Elements from the first to the last one (inclusive); 0 for an empty tensor.</summary>
    public static nint Extent(torch.Tensor tensor)
    {
        long[] shape = tensor.shape, strides = tensor.stride();
        long last = 0;
        for (int i = 0; i < shape.Length; i++)
        {
            if (shape[i] == 0) return 0;
            last += (shape[i] - 1) * strides[i];
        }
        return checked((nint)(last + 1));
    }

    /// <summary>
    /// flash-attn's <c>maybe_contiguous</c>: the kernels need a contiguous last dimension and read every other stride as
    /// given, so a tensor is copied only when <see cref="HasKernelLayout"/> says its layout cannot be used as it is.
    /// Returns <paramref name="tensor"/> itself when no copy is needed.
    /// </summary>
    public static torch.Tensor MaybeContiguous(torch.Tensor tensor) => HasKernelLayout(tensor) ? tensor : tensor.contiguous();

    /// <summary>
    /// Whether the kernels (and System.Numerics.Tensors spans) can address <paramref name="tensor"/> in place: its last
    /// stride is 1 (or the last dimension has at most one element) and its layout is a plain strided one (dimensions
    /// sorted by stride nest without overlapping: no broadcast stride 0, no interleaving made with as_strided).
    /// </summary>
    public static bool HasKernelLayout(torch.Tensor tensor)
    {
        long[] shape = tensor.shape, strides = tensor.stride();
        if (shape.Length > 0 && shape[^1] > 1 && strides[^1] != 1)
            return false;
        long minimum = 1;
        foreach (int dim in Enumerable.Range(0, shape.Length).Where(d => shape[d] > 1).OrderBy(d => strides[d]))
        {
            if (strides[dim] < minimum)
                return false;
            minimum = strides[dim] * shape[dim];
        }
        return true;
    }

    /// <summary>A read-only span over a CPU tensor's memory, honouring its strides (no copy). The tensor must stay alive while it is used.</summary>
    public static ReadOnlyTensorSpan<T> ReadSpan<T>(torch.Tensor tensor) where T : unmanaged
    {
        nint extent = Extent(tensor);
        return extent == 0
            ? new ReadOnlyTensorSpan<T>(Array.Empty<T>(), Lengths(tensor), SpanStrides(tensor)) // an empty tensor may have no storage
            : new ReadOnlyTensorSpan<T>((T*)DataPointer(tensor), extent, Lengths(tensor), SpanStrides(tensor));
    }

    /// <summary>A writable span over a CPU tensor's memory, honouring its strides (no copy).</summary>
    public static TensorSpan<T> WriteSpan<T>(torch.Tensor tensor) where T : unmanaged
    {
        nint extent = Extent(tensor);
        return extent == 0
            ? new TensorSpan<T>(Array.Empty<T>(), Lengths(tensor), SpanStrides(tensor))
            : new TensorSpan<T>((T*)DataPointer(tensor), extent, Lengths(tensor), SpanStrides(tensor));
    }

    /// <summary>
    /// torch's strides as System.Numerics.Tensors accepts them: it requires stride 0 for a dimension of length 0 or 1
    /// (torch keeps the row-major value there) and all strides 0 for an empty tensor. Elements are addressed the same.
    /// </summary>
    private static nint[] SpanStrides(torch.Tensor tensor)
    {
        nint[] lengths = Lengths(tensor), strides = Strides(tensor);
        bool empty = lengths.Contains(0);
        for (int i = 0; i < strides.Length; i++)
            if (empty || lengths[i] <= 1)
                strides[i] = 0;
        return strides;
    }

    /// <summary>Copies a host tensor into a new contiguous torch tensor of the same shape and the given dtype, on the CPU.</summary>
    public static torch.Tensor ToTorch<T>(Tensor<T> source, torch.ScalarType dtype) where T : unmanaged
    {
        long[] shape = Array.ConvertAll(source.Lengths.ToArray(), length => (long)length);
        var result = torch.empty(shape, dtype);
        if (source.FlattenedLength > 0)
            source.FlattenTo(new Span<T>((void*)DataPointer(result), checked((int)source.FlattenedLength)));
        return result;
    }

    /// <summary>A non-owning <see cref="CudaTensor{T}"/> view over a CUDA tensor's memory (torch's caching allocator keeps owning it).</summary>
    public static CudaTensor<T> CudaView<T>(torch.Tensor tensor) where T : unmanaged =>
        CudaTensor<T>.View(DataPointer(tensor), Lengths(tensor), Strides(tensor));
}
