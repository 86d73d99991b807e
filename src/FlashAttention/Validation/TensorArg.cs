using System.Numerics.Tensors;

namespace FlashAttn.Validation;

/// <summary>The shape of one tensor argument, with the name the user knows it by (for error messages).
/// Packed tensors are described by views that pick some of their dimensions.</summary>
internal readonly record struct TensorArg(string Name, nint[] Lengths, nint[] Strides)
{
    public static TensorArg Of<T>(in ReadOnlyTensorSpan<T> span, string name) => new(name, span.Lengths.ToArray(), span.Strides.ToArray());

    public int Rank => Lengths.Length;

    public int Length(int dim) => checked((int)Lengths[dim]);

    /// <summary>A view keeping the listed dimensions (for the q, k or v slice of a packed tensor).</summary>
    public TensorArg Pick(params int[] dims)
    {
        nint[] lengths = Lengths, strides = Strides;
        return new(Name, [.. dims.Select(d => lengths[d])], [.. dims.Select(d => strides[d])]);
    }

    public string ShapeText => "(" + string.Join(", ", Lengths) + ")";
}
