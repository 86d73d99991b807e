namespace FlashAttn.Cuda;

/// <summary>
/// Shape arithmetic for strided tensors (lengths and strides in elements, like System.Numerics.Tensors): validation,
/// row-major strides, the span of memory a layout covers, and gathering/scattering between a strided layout and a
/// dense row-major buffer. Host-side and pure.
/// </summary>
internal static class TensorLayout
{
    /// <summary>Row-major (C order) strides for <paramref name="lengths"/>.</summary>
    public static nint[] RowMajorStrides(ReadOnlySpan<nint> lengths)
    {
        var strides = new nint[lengths.Length];
        nint stride = 1;
        for (int d = lengths.Length - 1; d >= 0; d--)
        {
            strides[d] = stride;
            stride = checked(stride * Math.Max(lengths[d], 1));
        }
        return strides;
    }

    /// <summary>Product of the lengths.</summary>
    public static long ElementCount(ReadOnlySpan<nint> lengths)
    {
        long count = 1;
        foreach (nint length in lengths)
            count = checked(count * length);
        return count;
    }

    /// <summary>
    /// The number of elements from the first to the last element of the layout, inclusive: the memory it touches.
    /// 0 when any length is 0.
    /// </summary>
    public static long Extent(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides)
    {
        long last = 0;
        for (int d = 0; d < lengths.Length; d++)
        {
            if (lengths[d] == 0)
                return 0;
            last = checked(last + (long)(lengths[d] - 1) * strides[d]);
        }
        return checked(last + 1);
    }

    /// <summary>True when the layout is the dense row-major one (dimensions of length 1 may have any stride).</summary>
    public static bool IsRowMajor(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides)
    {
        if (lengths.Contains(0))
            return true; // nothing to lay out
        nint expected = 1;
        for (int d = lengths.Length - 1; d >= 0; d--)
        {
            if (lengths[d] != 1 && strides[d] != expected)
                return false;
            expected *= lengths[d];
        }
        return true;
    }

    /// <summary>Throws unless lengths and strides have the same rank, lengths are non-negative and strides non-negative.</summary>
    public static void Validate(ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides, string lengthsName, string stridesName)
    {
        if (lengths.Length == 0)
            throw new ArgumentException("A tensor needs at least one dimension.", lengthsName);
        if (strides.Length != lengths.Length)
            throw new ArgumentException($"Got {strides.Length} strides for {lengths.Length} dimensions.", stridesName);
        for (int d = 0; d < lengths.Length; d++)
        {
            if (lengths[d] < 0)
                throw new ArgumentOutOfRangeException(lengthsName, $"Length {lengths[d]} of dimension {d} is negative.");
            if (strides[d] < 0)
                throw new ArgumentOutOfRangeException(stridesName, $"Stride {strides[d]} of dimension {d} is negative; negative strides are not supported.");
        }
        _ = ElementCount(lengths);
        _ = Extent(lengths, strides);
    }

    /// <summary>Copies the layout's elements from <paramref name="source"/> (indexed by the layout) into dense row-major <paramref name="destination"/>.</summary>
    public static void Gather<T>(ReadOnlySpan<T> source, ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides, Span<T> destination) =>
        Walk(source, lengths, strides, destination, toDense: true);

    /// <summary>Copies dense row-major <paramref name="source"/> into the layout's elements of <paramref name="destination"/>; other elements are untouched.</summary>
    public static void Scatter<T>(ReadOnlySpan<T> source, ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides, Span<T> destination) =>
        Walk(source, lengths, strides, destination, toDense: false);

    /// <summary>Visits the layout's elements in row-major order: element i sits at the layout's offset.</summary>
    private static void Walk<T>(ReadOnlySpan<T> source, ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides, Span<T> destination, bool toDense)
    {
        long count = ElementCount(lengths);
        if (count == 0)
            return;
        Span<nint> index = stackalloc nint[lengths.Length];
        index.Clear();
        nint offset = 0;
        int last = lengths.Length - 1;
        for (long i = 0; i < count; i++)
        {
            if (toDense) destination[(int)i] = source[(int)offset];
            else destination[(int)offset] = source[(int)i];
            offset = Advance(index, lengths, strides, offset, last);
        }
    }

    private static nint Advance(Span<nint> index, ReadOnlySpan<nint> lengths, ReadOnlySpan<nint> strides, nint offset, int last)
    {
        for (int d = last; d >= 0; d--)
        {
            if (++index[d] < lengths[d])
                return offset + strides[d];
            offset -= (lengths[d] - 1) * strides[d];
            index[d] = 0;
        }
        return offset;
    }
}
