using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// flash-attn's <c>bert_padding</c> helpers over TorchSharp tensors: torch ops on the tensors' own device, differentiable
/// with respect to the hidden states (torch's autograd carries the gradient through the gather and the scatter).
/// </summary>
/// <remarks>The mask may have holes anywhere (left padding, gaps), as in flash-attn. <see cref="Unpad"/> reads the longest
/// sequence back to the host (one synchronisation, as flash-attn's <c>.item()</c>); <see cref="Pad"/> checks the index
/// range on the host too, because an out-of-range index on CUDA is a device-side assert that poisons the whole context.</remarks>
public static class FlashPadding
{
    /// <summary>
    /// Gathers the real tokens of a padded batch (flash-attn's <c>unpad_input(hidden_states, attention_mask)</c>).
    /// </summary>
    /// <param name="padded">(batch, seqlen, ...rest) hidden states, any dtype and device.</param>
    /// <param name="attentionMask">(batch, seqlen) bool or integer, nonzero at real tokens, on padded's device.</param>
    /// <returns>The tokens (total_tokens, ...rest), int64 indices, int32 cu_seqlens and seqlens on the mask's device, and the
    /// longest sequence.</returns>
    /// <exception cref="ArgumentException">A rank below 2, a mask that is not padded's (batch, seqlen), or different devices.</exception>
    public static TorchUnpaddedBatch Unpad(torch.Tensor padded, torch.Tensor attentionMask)
    {
        ArgumentNullException.ThrowIfNull(padded);
        ArgumentNullException.ThrowIfNull(attentionMask);
        long[] shape = padded.shape, maskShape = attentionMask.shape;
        if (shape.Length < 2)
            throw new ArgumentException($"{nameof(padded)} has shape {Shape(shape)}; it must be (batch, seqlen, ...).", nameof(padded));
        if (maskShape.Length != 2 || maskShape[0] != shape[0] || maskShape[1] != shape[1])
            throw new ArgumentException($"{nameof(attentionMask)} has shape {Shape(maskShape)}; it must be (batch, seqlen) = " +
                                        $"({shape[0]}, {shape[1]}), the first two dimensions of {nameof(padded)}.", nameof(attentionMask));
        SameDevice(padded, attentionMask, nameof(attentionMask), nameof(padded));

        using var scope = torch.NewDisposeScope();
        var real = attentionMask.ne(0);
        var seqlens = real.sum(1, type: torch.ScalarType.Int32);
        var indices = real.flatten().nonzero().flatten();
        var cumulative = torch.cat([torch.zeros(1, torch.ScalarType.Int32, real.device), seqlens.cumsum(0, torch.ScalarType.Int32)]);
        int maxSeqlen = shape[0] == 0 ? 0 : seqlens.max().item<int>();
        // (b s) ... -> gather by index_select, whose backward torch already has (a scatter-add into the padded gradient).
        var unpadded = padded.reshape([shape[0] * shape[1], .. shape[2..]]).index_select(0, indices);
        return new TorchUnpaddedBatch(unpadded.MoveToOuterDisposeScope(), indices.MoveToOuterDisposeScope(),
            cumulative.MoveToOuterDisposeScope(), seqlens.MoveToOuterDisposeScope(), maxSeqlen, shape[0], shape[1]);
    }

    /// <summary>
    /// Scatters tokens back into a padded batch with zeros elsewhere (flash-attn's <c>pad_input(hidden_states, indices,
    /// batch, seqlen)</c>); differentiable with respect to <paramref name="unpadded"/>.
    /// </summary>
    /// <param name="unpadded">(total_tokens, ...rest), any dtype and device.</param>
    /// <param name="indices">Integer (total_tokens): flat positions b * seqlen + s, distinct, on unpadded's device
    /// (e.g. <see cref="TorchUnpaddedBatch.Indices"/>).</param>
    /// <param name="batch">The padded batch size.</param>
    /// <param name="seqlen">The padded sequence length.</param>
    /// <returns>A new (batch, seqlen, ...rest) tensor in unpadded's dtype and device.</returns>
    /// <exception cref="ArgumentException">A count of indices other than total_tokens, an index out of range, a negative
    /// size, a non-integer or non-1-D index tensor, or different devices.</exception>
    public static torch.Tensor Pad(torch.Tensor unpadded, torch.Tensor indices, long batch, long seqlen)
    {
        ArgumentNullException.ThrowIfNull(unpadded);
        ArgumentNullException.ThrowIfNull(indices);
        ArgumentOutOfRangeException.ThrowIfNegative(batch);
        ArgumentOutOfRangeException.ThrowIfNegative(seqlen);
        long[] shape = unpadded.shape;
        if (shape.Length < 1)
            throw new ArgumentException($"{nameof(unpadded)} has rank 0; it must be (total_tokens, ...).", nameof(unpadded));
        if (indices.dim() != 1 || indices.shape[0] != shape[0] || !torch.is_integral(indices.dtype))
            throw new ArgumentException($"{nameof(indices)} is {indices.dtype} {Shape(indices.shape)}; it must be an integer tensor of " +
                                        $"{shape[0]} entries, one per token of {nameof(unpadded)} (the indices Unpad returned).", nameof(indices));
        SameDevice(unpadded, indices, nameof(indices), nameof(unpadded));

        using var scope = torch.NewDisposeScope();
        var positions = indices.to(torch.ScalarType.Int64);
        if (shape[0] > 0 && (positions.min().item<long>() < 0 || positions.max().item<long>() >= batch * seqlen))
            throw new ArgumentException($"{nameof(indices)} holds values outside 0..{batch * seqlen - 1} (batch {batch} x seqlen {seqlen}); " +
                                        "pass the batch and seqlen the tokens were unpadded from.", nameof(indices));
        var zeros = torch.zeros([batch * seqlen, .. shape[1..]], unpadded.dtype, unpadded.device);
        // Out-of-place index_copy: its gradient with respect to the source is the gradient gathered at the indices.
        var padded = zeros.index_copy(0, positions, unpadded).reshape([batch, seqlen, .. shape[1..]]);
        return padded.MoveToOuterDisposeScope();
    }

    /// <summary>A right-padded bool mask (batch, seqlen) on seqlens' device: row b is true for its first seqlens[b] positions.</summary>
    /// <param name="seqlens">Integer (batch): the real length of each sequence.</param>
    /// <param name="seqlen">The padded sequence length.</param>
    public static torch.Tensor MaskFromLengths(torch.Tensor seqlens, long seqlen)
    {
        ArgumentNullException.ThrowIfNull(seqlens);
        ArgumentOutOfRangeException.ThrowIfNegative(seqlen);
        if (seqlens.dim() != 1 || !torch.is_integral(seqlens.dtype))
            throw new ArgumentException($"{nameof(seqlens)} is {seqlens.dtype} {Shape(seqlens.shape)}; it must be a 1-D integer tensor (batch).",
                nameof(seqlens));
        using var scope = torch.NewDisposeScope();
        var positions = torch.arange(seqlen, torch.ScalarType.Int64, seqlens.device);
        return positions.unsqueeze(0).lt(seqlens.to(torch.ScalarType.Int64).unsqueeze(1)).MoveToOuterDisposeScope();
    }

    private static void SameDevice(torch.Tensor reference, torch.Tensor other, string otherName, string referenceName)
    {
        if (other.device_type != reference.device_type || other.device_index != reference.device_index)
            throw new ArgumentException($"{otherName} is on {other.device} but {referenceName} is on {reference.device}; move them to one device.",
                otherName);
    }

    private static string Shape(long[] shape) => "(" + string.Join(", ", shape) + ")";
}
