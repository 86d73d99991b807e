using System.Numerics.Tensors;
using FlashAttn.Padding;

namespace FlashAttn;

/// <summary>
/// flash-attn's <c>bert_padding</c> helpers: move hidden states between a padded batch (batch, seqlen, ...) with an
/// attention mask and the concatenated varlen form (total_tokens, ...) that <see cref="FlashAttention.ForwardVarlen{T}(ReadOnlyTensorSpan{T}, ReadOnlyTensorSpan{T}, ReadOnlyTensorSpan{T}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, AttentionOptions?, CancellationToken)"/>
/// takes, so padded positions cost no attention work.
/// </summary>
/// <remarks>The mask may have holes anywhere (left padding, gaps), as in flash-attn: the real tokens of a sequence are
/// taken in order and attend to each other as one contiguous sequence of their count.</remarks>
public static class VarlenPadding
{
    /// <summary>
    /// Gathers the real tokens of a padded batch (flash-attn's <c>unpad_input(hidden_states, attention_mask)</c>).
    /// </summary>
    /// <param name="padded">(batch, seqlen, ...rest) hidden states; any strides, any trailing shape (e.g. heads, headdim).</param>
    /// <param name="attentionMask">(batch, seqlen): true where a token is real, false at padding.</param>
    /// <returns>The tokens (total_tokens, ...rest) in mask order, their flat indices, cu_seqlens (batch + 1), the per-sequence
    /// lengths and the longest one.</returns>
    /// <exception cref="ArgumentException">A rank below 2, or a mask whose shape is not padded's (batch, seqlen).</exception>
    public static UnpaddedBatch<T> Unpad<T>(ReadOnlyTensorSpan<T> padded, ReadOnlyTensorSpan<bool> attentionMask)
    {
        var (batch, seqlen) = PaddingArguments.Mask(padded, attentionMask, nameof(padded), nameof(attentionMask));
        var mask = new bool[batch * seqlen];
        attentionMask.FlattenTo(mask);

        int[] seqlens = new int[batch], cumulative = new int[batch + 1];
        for (int b = 0; b < batch; b++)
        {
            seqlens[b] = mask.AsSpan(b * seqlen, seqlen).Count(true);
            cumulative[b + 1] = cumulative[b] + seqlens[b];
        }
        int[] indices = new int[cumulative[batch]];
        for (int position = 0, token = 0; position < mask.Length; position++)
            if (mask[position])
                indices[token++] = position;

        nint[] rest = padded.Lengths[2..].ToArray();
        int rowLength = PaddingArguments.RowLength(rest, nameof(padded));
        var values = new T[checked(indices.Length * rowLength)];
        var rows = new TokenRows<T>(padded.Rank, leading: 2);
        for (int token = 0; token < indices.Length; token++)
            rows.Copy(padded, [indices[token] / seqlen, indices[token] % seqlen], values.AsSpan(token * rowLength, rowLength));

        var unpadded = Tensor.Create(values, [indices.Length, .. rest]);
        return new UnpaddedBatch<T>(unpadded, indices, cumulative, seqlens, seqlens.Length == 0 ? 0 : seqlens.Max(), batch, seqlen);
    }

    /// <summary>
    /// Scatters tokens back into a padded batch with zeros at every other position (flash-attn's
    /// <c>pad_input(hidden_states, indices, batch, seqlen)</c>).
    /// </summary>
    /// <param name="unpadded">(total_tokens, ...rest); any strides, any trailing shape.</param>
    /// <param name="indices">The flat position b * seqlen + s of each token, e.g. <see cref="UnpaddedBatch{T}.Indices"/>;
    /// distinct and within batch * seqlen.</param>
    /// <param name="batch">The padded batch size.</param>
    /// <param name="seqlen">The padded sequence length.</param>
    /// <returns>A new (batch, seqlen, ...rest) tensor.</returns>
    /// <exception cref="ArgumentException">A count of indices other than total_tokens, an index out of range or repeated,
    /// a negative size, or a rank-0 <paramref name="unpadded"/>.</exception>
    public static Tensor<T> Pad<T>(ReadOnlyTensorSpan<T> unpadded, ReadOnlySpan<int> indices, int batch, int seqlen)
    {
        PaddingArguments.Indices(unpadded, indices, batch, seqlen, nameof(unpadded), nameof(indices));
        nint[] rest = unpadded.Lengths[1..].ToArray();
        int rowLength = PaddingArguments.RowLength(rest, nameof(unpadded));
        var values = new T[checked(batch * seqlen * rowLength)]; // default(T) is zero for every numeric T
        var rows = new TokenRows<T>(unpadded.Rank, leading: 1);
        for (int token = 0; token < indices.Length; token++)
            rows.Copy(unpadded, [token], values.AsSpan(indices[token] * rowLength, rowLength));
        return Tensor.Create(values, [batch, seqlen, .. rest]);
    }

    /// <summary>A right-padded attention mask (batch, seqlen): row b is true for its first seqlens[b] positions.</summary>
    /// <param name="seqlens">The real length of each sequence, 0..seqlen.</param>
    /// <param name="seqlen">The padded sequence length.</param>
    public static Tensor<bool> MaskFromLengths(ReadOnlySpan<int> seqlens, int seqlen)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(seqlen);
        PaddingArguments.Lengths(seqlens, seqlen, nameof(seqlens));
        var mask = new bool[checked(seqlens.Length * seqlen)];
        for (int b = 0; b < seqlens.Length; b++)
            mask.AsSpan(b * seqlen, seqlens[b]).Fill(true);
        return Tensor.Create(mask, [seqlens.Length, seqlen]);
    }

    /// <summary>cu_seqlens for sequences already concatenated: batch + 1 offsets, 0 first, then the running sums.</summary>
    /// <param name="seqlens">The length of each sequence, non-negative.</param>
    public static int[] CumulativeSeqlens(ReadOnlySpan<int> seqlens)
    {
        PaddingArguments.Lengths(seqlens, int.MaxValue, nameof(seqlens));
        var cumulative = new int[seqlens.Length + 1];
        long total = 0;
        for (int b = 0; b < seqlens.Length; b++)
        {
            total += seqlens[b];
            if (total > int.MaxValue)
                throw new ArgumentException($"{nameof(seqlens)} add up to more than int.MaxValue tokens; split the batch.", nameof(seqlens));
            cumulative[b + 1] = (int)total;
        }
        return cumulative;
    }
}
