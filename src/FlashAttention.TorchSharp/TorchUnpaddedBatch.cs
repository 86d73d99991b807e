using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// The result of <see cref="FlashPadding.Unpad"/> (flash-attn's <c>unpad_input</c> tuple). The tensors live on the inputs'
/// device; dispose this (or use a dispose scope) to free them.
/// </summary>
public sealed class TorchUnpaddedBatch : IDisposable
{
    internal TorchUnpaddedBatch(torch.Tensor unpadded, torch.Tensor indices, torch.Tensor cumulativeSeqlens, torch.Tensor seqlens,
        int maxSeqlen, long batch, long seqlen)
    {
        Unpadded = unpadded;
        Indices = indices;
        CumulativeSeqlens = cumulativeSeqlens;
        Seqlens = seqlens;
        MaxSeqlen = maxSeqlen;
        Batch = batch;
        Seqlen = seqlen;
    }

    /// <summary>The real tokens in mask order, (total_tokens, ...rest); differentiable with respect to the padded hidden states.</summary>
    public torch.Tensor Unpadded { get; }

    /// <summary>int64 (total_tokens): the flat position b * seqlen + s of each real token, ascending.</summary>
    public torch.Tensor Indices { get; }

    /// <summary>int32 (batch + 1): cumulative offsets, 0 first and total_tokens last (flash-attn's <c>cu_seqlens</c>).</summary>
    public torch.Tensor CumulativeSeqlens { get; }

    /// <summary>int32 (batch): the number of real tokens of each sequence (flash-attn's <c>used_seqlens_in_batch</c>).</summary>
    public torch.Tensor Seqlens { get; }

    /// <summary>The longest sequence (flash-attn's <c>max_seqlen_in_batch</c>); 0 when every sequence is empty.</summary>
    public int MaxSeqlen { get; }

    /// <summary>The padded batch size.</summary>
    public long Batch { get; }

    /// <summary>The padded sequence length.</summary>
    public long Seqlen { get; }

    /// <summary>Scatters a tensor laid out like <see cref="Unpadded"/> back to (batch, seqlen, ...rest) with zeros at the
    /// padding: <see cref="FlashPadding.Pad"/> with this batch's indices.</summary>
    /// <param name="unpadded">(total_tokens, ...rest) on the same device.</param>
    public torch.Tensor Pad(torch.Tensor unpadded) => FlashPadding.Pad(unpadded, Indices, Batch, Seqlen);

    /// <inheritdoc />
    public void Dispose()
    {
        Unpadded.Dispose();
        Indices.Dispose();
        CumulativeSeqlens.Dispose();
        Seqlens.Dispose();
    }
}
