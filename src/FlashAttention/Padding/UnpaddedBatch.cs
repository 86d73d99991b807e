using System.Numerics.Tensors;

namespace FlashAttn;

/// <summary>
/// The result of <see cref="VarlenPadding.Unpad{T}"/> (flash-attn's <c>unpad_input</c> tuple): the real tokens of a
/// padded batch, concatenated, with what the varlen entry points and <see cref="VarlenPadding.Pad{T}"/> need.
/// </summary>
/// <typeparam name="T">The element type of the hidden states.</typeparam>
public sealed class UnpaddedBatch<T>
{
    internal UnpaddedBatch(Tensor<T> unpadded, int[] indices, int[] cumulativeSeqlens, int[] seqlens, int maxSeqlen, int batch, int seqlen)
    {
        Unpadded = unpadded;
        Indices = indices;
        CumulativeSeqlens = cumulativeSeqlens;
        Seqlens = seqlens;
        MaxSeqlen = maxSeqlen;
        Batch = batch;
        Seqlen = seqlen;
    }

    /// <summary>The real tokens in mask order, (total_tokens, ...rest) (flash-attn's <c>hidden_states</c>).</summary>
    public Tensor<T> Unpadded { get; }

    /// <summary>The flat position b * seqlen + s of each real token, ascending (flash-attn's <c>indices</c>).</summary>
    public int[] Indices { get; }

    /// <summary>batch + 1 cumulative offsets, 0 first and total_tokens last (flash-attn's <c>cu_seqlens</c>): pass it to
    /// <see cref="FlashAttention.ForwardVarlen{T}(ReadOnlyTensorSpan{T}, ReadOnlyTensorSpan{T}, ReadOnlyTensorSpan{T}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, AttentionOptions?, CancellationToken)"/> as cuSeqlensQ and/or cuSeqlensK.</summary>
    public int[] CumulativeSeqlens { get; }

    /// <summary>The number of real tokens of each sequence (flash-attn's <c>seqused</c> / <c>used_seqlens_in_batch</c>).</summary>
    public int[] Seqlens { get; }

    /// <summary>The longest sequence (flash-attn's <c>max_seqlen_in_batch</c>); 0 when every sequence is empty.</summary>
    public int MaxSeqlen { get; }

    /// <summary>The padded batch size.</summary>
    public int Batch { get; }

    /// <summary>The padded sequence length.</summary>
    public int Seqlen { get; }

    /// <summary>The number of real tokens (the first dimension of <see cref="Unpadded"/>).</summary>
    public int TotalTokens => Indices.Length;

    /// <summary>Scatters a tensor laid out like <see cref="Unpadded"/> (e.g. the varlen attention output) back to
    /// (batch, seqlen, ...rest) with zeros at the padding: <see cref="VarlenPadding.Pad{T}"/> with this batch's indices.</summary>
    /// <param name="unpadded">(total_tokens, ...rest), any trailing shape.</param>
    public Tensor<TOut> Pad<TOut>(ReadOnlyTensorSpan<TOut> unpadded) => VarlenPadding.Pad(unpadded, Indices, Batch, Seqlen);
}
