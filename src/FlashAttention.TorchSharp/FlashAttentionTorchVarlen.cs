using TorchSharp;

namespace FlashAttn.TorchSharp;

public static partial class FlashAttentionTorch
{
    /// <summary>
    /// Attention over variable-length sequences (flash-attn's <c>flash_attn_varlen_func</c>), differentiable with respect to
    /// q, k and v.
    /// </summary>
    /// <param name="q">(total_q, heads_q, headdim); headdim 1..256.</param>
    /// <param name="k">(total_k, heads_kv, headdim); heads_kv divides heads_q (MQA/GQA).</param>
    /// <param name="v">Same shape as k.</param>
    /// <param name="cuSeqlensQ">int32 (batch + 1) cumulative query offsets on q's device: 0, ..., total_q.</param>
    /// <param name="cuSeqlensK">int32 (batch + 1) cumulative key offsets on q's device: 0, ..., total_k.</param>
    /// <param name="maxSeqlenQ">The longest query sequence.</param>
    /// <param name="maxSeqlenK">The longest key sequence.</param>
    /// <param name="options">Causal, scale, dropout, window, softcap, ALiBi, deterministic (flash-attn's keyword arguments);
    /// null for the defaults. <see cref="AttentionOptions.ReturnProbabilities"/> is not available here.</param>
    /// <returns>The output, (total_q, heads_q, headdim), on q's device in q's dtype.</returns>
    /// <remarks>
    /// <para><b>Variable-length batches</b> (flash-attn's <c>flash_attn_varlen_*_func</c>). Sequences are concatenated along the
    /// token dimension: sequence b holds query rows cu_seqlens_q[b] .. cu_seqlens_q[b + 1] - 1 and key rows likewise, with no
    /// padding work. The offsets are what <see cref="FlashPadding.Unpad"/> returns
    /// (<see cref="TorchUnpaddedBatch.CumulativeSeqlens"/>, <see cref="TorchUnpaddedBatch.MaxSeqlen"/>): int32, 1-D, batch + 1
    /// entries, on the inputs' device. Masks (causal, window), ALiBi and dropout apply per sequence; (batch, heads) ALiBi
    /// slopes index sequences.</para>
    /// <para>On CPU tensors the offsets are read to the host once, when the call is made, and checked (0 first, non-decreasing,
    /// the token count last, no sequence longer than the maximum). On CUDA tensors they stay in device memory and are never
    /// read back (no synchronisation, as in flash-attn): the kernels clamp them to the token counts and the maximum lengths,
    /// so wrong offsets give wrong results, not faults.</para>
    /// </remarks>
    /// <exception cref="ArgumentException">Mismatched shapes, dtypes or devices, an unsupported dtype, cu_seqlens that are not
    /// int32, 1-D and on q's device, or (CPU) offsets that do not describe the tokens.</exception>
    /// <exception cref="NotSupportedException">float32 on CUDA, or a device other than CPU and CUDA.</exception>
    public static torch.Tensor AttentionVarlen(torch.Tensor q, torch.Tensor k, torch.Tensor v, torch.Tensor cuSeqlensQ, torch.Tensor cuSeqlensK,
        int maxSeqlenQ, int maxSeqlenK, AttentionOptions? options = null) =>
        OutputOnly(AttentionVarlenWithLse(q, k, v, cuSeqlensQ, cuSeqlensK, maxSeqlenQ, maxSeqlenK, options));

    /// <summary>
    /// <see cref="AttentionVarlen"/> that also returns the log-sum-exp (flash-attn's <c>flash_attn_varlen_func</c> with
    /// <c>return_attn_probs=True</c>, less the probabilities).
    /// </summary>
    /// <param name="q">(total_q, heads_q, headdim).</param>
    /// <param name="k">(total_k, heads_kv, headdim).</param>
    /// <param name="v">Same shape as k.</param>
    /// <param name="cuSeqlensQ">int32 (batch + 1) cumulative query offsets on q's device.</param>
    /// <param name="cuSeqlensK">int32 (batch + 1) cumulative key offsets on q's device.</param>
    /// <param name="maxSeqlenQ">The longest query sequence.</param>
    /// <param name="maxSeqlenK">The longest key sequence.</param>
    /// <param name="options">Attention options; null for the defaults.</param>
    /// <returns>The differentiable output (total_q, heads_q, headdim) and the fp32 log-sum-exp (heads_q, total_q) of the
    /// softmax (scaled scores), +inf for a row that sees no key. The log-sum-exp takes no part in autograd; it is the tensor
    /// backward reads, so do not modify it in place.</returns>
    /// <exception cref="ArgumentException">See <see cref="AttentionVarlen"/>.</exception>
    /// <exception cref="NotSupportedException">See <see cref="AttentionVarlen"/>.</exception>
    public static (torch.Tensor Output, torch.Tensor LogSumExp) AttentionVarlenWithLse(torch.Tensor q, torch.Tensor k, torch.Tensor v,
        torch.Tensor cuSeqlensQ, torch.Tensor cuSeqlensK, int maxSeqlenQ, int maxSeqlenK, AttentionOptions? options = null)
    {
        var call = VarlenCall.Create(Packing.Separate, options, (cuSeqlensQ, nameof(cuSeqlensQ)), (cuSeqlensK, nameof(cuSeqlensK)),
            (maxSeqlenQ, nameof(maxSeqlenQ)), (maxSeqlenK, nameof(maxSeqlenK)), (q, nameof(q)), (k, nameof(k)), (v, nameof(v)));
        var output = VarlenFunction.apply(q, k, v, cuSeqlensQ, cuSeqlensK, call);
        return (output, call.LogSumExp!);
    }

    /// <summary>
    /// Variable-length attention over a packed qkv tensor (flash-attn's <c>flash_attn_varlen_qkvpacked_func</c>),
    /// differentiable; q, k and v are read in place through the packed tensor's strides and the gradient comes back packed
    /// the same way.
    /// </summary>
    /// <param name="qkv">(total, 3, heads, headdim).</param>
    /// <param name="cuSeqlens">int32 (batch + 1) cumulative offsets on qkv's device: 0, ..., total.</param>
    /// <param name="maxSeqlen">The longest sequence.</param>
    /// <param name="options">Attention options; null for the defaults.</param>
    /// <returns>The output, (total, heads, headdim).</returns>
    /// <remarks>Offsets, devices and dtypes as for <see cref="AttentionVarlen"/>.</remarks>
    /// <exception cref="ArgumentException">A shape other than (total, 3, heads, headdim), an unsupported dtype, or bad offsets.</exception>
    /// <exception cref="NotSupportedException">float32 on CUDA, or another device.</exception>
    public static torch.Tensor AttentionVarlenQkvPacked(torch.Tensor qkv, torch.Tensor cuSeqlens, int maxSeqlen, AttentionOptions? options = null) =>
        OutputOnly(AttentionVarlenQkvPackedWithLse(qkv, cuSeqlens, maxSeqlen, options));

    /// <summary><see cref="AttentionVarlenQkvPacked"/> that also returns the log-sum-exp (flash-attn's
    /// <c>flash_attn_varlen_qkvpacked_func</c> with <c>return_attn_probs=True</c>, less the probabilities).</summary>
    /// <param name="qkv">(total, 3, heads, headdim).</param>
    /// <param name="cuSeqlens">int32 (batch + 1) cumulative offsets on qkv's device.</param>
    /// <param name="maxSeqlen">The longest sequence.</param>
    /// <param name="options">Attention options; null for the defaults.</param>
    /// <returns>The differentiable output (total, heads, headdim) and the fp32 log-sum-exp (heads, total), outside autograd.</returns>
    /// <exception cref="ArgumentException">See <see cref="AttentionVarlenQkvPacked"/>.</exception>
    /// <exception cref="NotSupportedException">See <see cref="AttentionVarlenQkvPacked"/>.</exception>
    public static (torch.Tensor Output, torch.Tensor LogSumExp) AttentionVarlenQkvPackedWithLse(torch.Tensor qkv, torch.Tensor cuSeqlens,
        int maxSeqlen, AttentionOptions? options = null)
    {
        var call = VarlenCall.Create(Packing.QkvPacked, options, (cuSeqlens, nameof(cuSeqlens)), (cuSeqlens, nameof(cuSeqlens)),
            (maxSeqlen, nameof(maxSeqlen)), (maxSeqlen, nameof(maxSeqlen)), (qkv, nameof(qkv)));
        var output = VarlenFunction.apply(qkv, cuSeqlens, cuSeqlens, call);
        return (output, call.LogSumExp!);
    }

    /// <summary>
    /// Variable-length attention of q over a packed kv tensor (flash-attn's <c>flash_attn_varlen_kvpacked_func</c>),
    /// differentiable with respect to q and kv.
    /// </summary>
    /// <param name="q">(total_q, heads_q, headdim).</param>
    /// <param name="kv">(total_k, 2, heads_kv, headdim); heads_kv divides heads_q.</param>
    /// <param name="cuSeqlensQ">int32 (batch + 1) cumulative query offsets on q's device.</param>
    /// <param name="cuSeqlensK">int32 (batch + 1) cumulative key offsets on q's device.</param>
    /// <param name="maxSeqlenQ">The longest query sequence.</param>
    /// <param name="maxSeqlenK">The longest key sequence.</param>
    /// <param name="options">Attention options; null for the defaults.</param>
    /// <returns>The output, (total_q, heads_q, headdim).</returns>
    /// <remarks>Offsets, devices and dtypes as for <see cref="AttentionVarlen"/>.</remarks>
    /// <exception cref="ArgumentException">Mismatched shapes, dtypes or devices, an unsupported dtype, or bad offsets.</exception>
    /// <exception cref="NotSupportedException">float32 on CUDA, or another device.</exception>
    public static torch.Tensor AttentionVarlenKvPacked(torch.Tensor q, torch.Tensor kv, torch.Tensor cuSeqlensQ, torch.Tensor cuSeqlensK,
        int maxSeqlenQ, int maxSeqlenK, AttentionOptions? options = null) =>
        OutputOnly(AttentionVarlenKvPackedWithLse(q, kv, cuSeqlensQ, cuSeqlensK, maxSeqlenQ, maxSeqlenK, options));

    /// <summary><see cref="AttentionVarlenKvPacked"/> that also returns the log-sum-exp (flash-attn's
    /// <c>flash_attn_varlen_kvpacked_func</c> with <c>return_attn_probs=True</c>, less the probabilities).</summary>
    /// <param name="q">(total_q, heads_q, headdim).</param>
    /// <param name="kv">(total_k, 2, heads_kv, headdim).</param>
    /// <param name="cuSeqlensQ">int32 (batch + 1) cumulative query offsets on q's device.</param>
    /// <param name="cuSeqlensK">int32 (batch + 1) cumulative key offsets on q's device.</param>
    /// <param name="maxSeqlenQ">The longest query sequence.</param>
    /// <param name="maxSeqlenK">The longest key sequence.</param>
    /// <param name="options">Attention options; null for the defaults.</param>
    /// <returns>The differentiable output (total_q, heads_q, headdim) and the fp32 log-sum-exp (heads_q, total_q), outside autograd.</returns>
    /// <exception cref="ArgumentException">See <see cref="AttentionVarlenKvPacked"/>.</exception>
    /// <exception cref="NotSupportedException">See <see cref="AttentionVarlenKvPacked"/>.</exception>
    public static (torch.Tensor Output, torch.Tensor LogSumExp) AttentionVarlenKvPackedWithLse(torch.Tensor q, torch.Tensor kv,
        torch.Tensor cuSeqlensQ, torch.Tensor cuSeqlensK, int maxSeqlenQ, int maxSeqlenK, AttentionOptions? options = null)
    {
        var call = VarlenCall.Create(Packing.KvPacked, options, (cuSeqlensQ, nameof(cuSeqlensQ)), (cuSeqlensK, nameof(cuSeqlensK)),
            (maxSeqlenQ, nameof(maxSeqlenQ)), (maxSeqlenK, nameof(maxSeqlenK)), (q, nameof(q)), (kv, nameof(kv)));
        var output = VarlenFunction.apply(q, kv, cuSeqlensQ, cuSeqlensK, call);
        return (output, call.LogSumExp!);
    }

    /// <summary>The output alone: the caller's handle on the log-sum-exp is released at once (autograd keeps its own).</summary>
    private static torch.Tensor OutputOnly((torch.Tensor Output, torch.Tensor LogSumExp) result)
    {
        result.LogSumExp.Dispose();
        return result.Output;
    }
}
