using System.Buffers;
using System.Numerics.Tensors;

namespace FlashAttn.Padding;

/// <summary>
/// Copies one token's trailing dimensions (the "...rest" of (batch, seqlen, ...rest) or (total, ...rest)) out of a
/// strided span into a dense row-major row. Works for any rank and any strides the span allows.
/// </summary>
internal sealed class TokenRows<T>
{
    private readonly NRange[] _ranges;
    private readonly int _leading;

    /// <param name="rank">The source's rank.</param>
    /// <param name="leading">How many leading dimensions address a token (2 for padded, 1 for unpadded).</param>
    public TokenRows(int rank, int leading)
    {
        _ranges = new NRange[rank];
        Array.Fill(_ranges, NRange.All);
        _leading = leading;
    }

    /// <summary>Copies source[position..., :, ...] into <paramref name="destination"/> (exactly one row long).</summary>
    public void Copy(in ReadOnlyTensorSpan<T> source, ReadOnlySpan<int> position, Span<T> destination)
    {
        for (int d = 0; d < _leading; d++)
            _ranges[d] = new NRange(position[d], position[d] + 1);
        source.Slice(_ranges).FlattenTo(destination);
    }
}
