using System.Numerics.Tensors;
using FlashAttn.Validation;

namespace FlashAttn;

public static unsafe partial class FlashAttention
{
    /// <summary>Attention over separate q, k, v (flash-attn's <c>flash_attn_func</c>).</summary>
    /// <param name="q">(batch, seqlen_q, heads_q, headdim); headdim 1..256 and contiguous.</param>
    /// <param name="k">(batch, seqlen_k, heads_kv, headdim); heads_kv divides heads_q (MQA/GQA).</param>
    /// <param name="v">Same shape as k.</param>
    /// <param name="options">Causal, scale, dropout, window, softcap, ALiBi...; null for the defaults.</param>
    /// <param name="cancellationToken">Cancels long CPU work.</param>
    public static AttentionResult<T> Forward<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k, ReadOnlyTensorSpan<T> v,
        AttentionOptions? options = null, CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        TensorArg qa = TensorArg.Of(q, nameof(q)), ka = TensorArg.Of(k, nameof(k)), va = TensorArg.Of(v, nameof(v));
        var shape = ShapeValidator.Fixed(qa, ka, va, options, typeof(T));
        fixed (T* pq = q)
        fixed (T* pk = k)
        fixed (T* pv = v)
            return RunForward(shape, options, Operand<T>.Of(pq, qa), Operand<T>.Of(pk, ka), Operand<T>.Of(pv, va), qa.Lengths, cancellationToken);
    }

    /// <summary>Attention over a packed qkv tensor (flash-attn's <c>flash_attn_qkvpacked_func</c>), read through its strides without copies.</summary>
    /// <param name="qkv">(batch, seqlen, 3, heads, headdim).</param>
    /// <param name="options">Attention options; null for the defaults.</param>
    /// <param name="cancellationToken">Cancels long CPU work.</param>
    public static AttentionResult<T> ForwardQkvPacked<T>(ReadOnlyTensorSpan<T> qkv, AttentionOptions? options = null,
        CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var packed = Packed(TensorArg.Of(qkv, nameof(qkv)), 5, 3, "(batch, seqlen, 3, heads, headdim)");
        var view = packed.Pick(0, 1, 3, 4);
        var shape = ShapeValidator.Fixed(view, view, view, options, typeof(T));
        fixed (T* p = qkv)
        {
            var q = Operand<T>.Of(p, view);
            return RunForward(shape, options, q, q.Offset(packed.Strides[2]), q.Offset(2 * packed.Strides[2]), view.Lengths, cancellationToken);
        }
    }

    /// <summary>Attention of q over a packed kv tensor (flash-attn's <c>flash_attn_kvpacked_func</c>).</summary>
    /// <param name="q">(batch, seqlen_q, heads_q, headdim).</param>
    /// <param name="kv">(batch, seqlen_k, 2, heads_kv, headdim).</param>
    /// <param name="options">Attention options; null for the defaults.</param>
    /// <param name="cancellationToken">Cancels long CPU work.</param>
    public static AttentionResult<T> ForwardKvPacked<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> kv, AttentionOptions? options = null,
        CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var qa = TensorArg.Of(q, nameof(q));
        var packed = Packed(TensorArg.Of(kv, nameof(kv)), 5, 2, "(batch, seqlen_k, 2, heads_kv, headdim)");
        var kView = packed.Pick(0, 1, 3, 4);
        var shape = ShapeValidator.Fixed(qa, kView, kView, options, typeof(T));
        fixed (T* pq = q)
        fixed (T* pkv = kv)
        {
            var k = Operand<T>.Of(pkv, kView);
            return RunForward(shape, options, Operand<T>.Of(pq, qa), k, k.Offset(packed.Strides[2]), qa.Lengths, cancellationToken);
        }
    }

    /// <summary>
    /// Attention over separate q, k, v into caller-owned output and log-sum-exp tensors (flash-attn's
    /// <c>out=</c> argument): no allocation for the results. Nothing is written when validation fails.
    /// </summary>
    /// <param name="q">(batch, seqlen_q, heads_q, headdim).</param>
    /// <param name="k">(batch, seqlen_k, heads_kv, headdim).</param>
    /// <param name="v">Same shape as k.</param>
    /// <param name="output">Receives O; shaped like q, last dimension contiguous.</param>
    /// <param name="logSumExp">Receives the fp32 log-sum-exp, (batch, heads_q, seqlen_q), last dimension contiguous.</param>
    /// <param name="options">Attention options (ReturnProbabilities is not available here).</param>
    /// <param name="cancellationToken">Cancels long CPU work: the call then throws <see cref="OperationCanceledException"/> and
    /// leaves <paramref name="output"/> and <paramref name="logSumExp"/> partly written. Each query row of each head holds
    /// either its final values (the O row and its log-sum-exp together, as an uncancelled call writes them) or its previous
    /// contents; which rows were finished is unspecified. Nothing outside the two tensors' elements is written.</param>
    /// <returns>The dropout state used, or null when dropout is off.</returns>
    public static DropoutState? ForwardInto<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k, ReadOnlyTensorSpan<T> v,
        TensorSpan<T> output, TensorSpan<float> logSumExp, AttentionOptions? options = null, CancellationToken cancellationToken = default)
        where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        TensorArg qa = TensorArg.Of(q, nameof(q)), ka = TensorArg.Of(k, nameof(k)), va = TensorArg.Of(v, nameof(v));
        var shape = ShapeValidator.Fixed(qa, ka, va, options, typeof(T));
        TensorArg oa = TensorArg.Of<T>(output, nameof(output)), la = TensorArg.Of<float>(logSumExp, nameof(logSumExp));
        ShapeValidator.Backward(shape, qa, oa, oa, la);
        if (options.ReturnProbabilities)
            throw new ArgumentException("ReturnProbabilities needs the allocating Forward overload.", nameof(options));
        DropoutState? dropoutState = options.DropoutProbability > 0f ? options.DropoutState ?? DropoutState.Next() : null;
        var settings = AttentionSettings.Resolve(options, shape, dropoutState);
        fixed (T* pq = q)
        fixed (T* pk = k)
        fixed (T* pv = v)
        fixed (T* po = output)
        fixed (float* pl = logSumExp)
            Cpu.CpuAttention.Forward(shape, settings, Operand<T>.Of(pq, qa), Operand<T>.Of(pk, ka), Operand<T>.Of(pv, va),
                Operand<T>.Of(po, oa), LseOperand.Of(pl, la), null, cancellationToken);
        return dropoutState;
    }
}
