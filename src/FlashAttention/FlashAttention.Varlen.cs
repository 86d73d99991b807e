using System.Numerics.Tensors;
using FlashAttn.Validation;

namespace FlashAttn;

public static unsafe partial class FlashAttention
{
    /// <summary>
    /// Attention over variable-length sequences concatenated along the token dimension (flash-attn's
    /// <c>flash_attn_varlen_func</c>): sequence b holds tokens cuSeqlens[b] .. cuSeqlens[b + 1] - 1. No padding work is done.
    /// </summary>
    /// <param name="q">(total_q, heads_q, headdim).</param>
    /// <param name="k">(total_k, heads_kv, headdim).</param>
    /// <param name="v">Same shape as k.</param>
    /// <param name="cuSeqlensQ">batch + 1 cumulative query offsets, starting at 0 and ending at total_q.</param>
    /// <param name="cuSeqlensK">batch + 1 cumulative key offsets, starting at 0 and ending at total_k.</param>
    /// <param name="maxSeqlenQ">The longest query sequence.</param>
    /// <param name="maxSeqlenK">The longest key sequence.</param>
    /// <param name="options">Attention options; null for the defaults. Masks align per sequence.</param>
    /// <param name="cancellationToken">Cancels long CPU work.</param>
    /// <returns>Output (total_q, heads_q, headdim) and log-sum-exp (heads_q, total_q).</returns>
    public static AttentionResult<T> ForwardVarlen<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k, ReadOnlyTensorSpan<T> v,
        ReadOnlySpan<int> cuSeqlensQ, ReadOnlySpan<int> cuSeqlensK, int maxSeqlenQ, int maxSeqlenK, AttentionOptions? options = null,
        CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        TensorArg qa = TensorArg.Of(q, nameof(q)), ka = TensorArg.Of(k, nameof(k)), va = TensorArg.Of(v, nameof(v));
        var shape = ShapeValidator.Varlen(qa, ka, va, cuSeqlensQ, cuSeqlensK, maxSeqlenQ, maxSeqlenK, options, typeof(T));
        fixed (T* pq = q)
        fixed (T* pk = k)
        fixed (T* pv = v)
            return RunForward(shape, options, Operand<T>.Of(pq, qa), Operand<T>.Of(pk, ka), Operand<T>.Of(pv, va), qa.Lengths, cancellationToken);
    }

    /// <summary>Varlen attention over a packed qkv tensor (flash-attn's <c>flash_attn_varlen_qkvpacked_func</c>).</summary>
    /// <param name="qkv">(total, 3, heads, headdim).</param>
    /// <param name="cuSeqlens">batch + 1 cumulative offsets.</param>
    /// <param name="maxSeqlen">The longest sequence.</param>
    /// <param name="options">Attention options; null for the defaults.</param>
    /// <param name="cancellationToken">Cancels long CPU work.</param>
    public static AttentionResult<T> ForwardVarlenQkvPacked<T>(ReadOnlyTensorSpan<T> qkv, ReadOnlySpan<int> cuSeqlens, int maxSeqlen,
        AttentionOptions? options = null, CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var packed = Packed(TensorArg.Of(qkv, nameof(qkv)), 4, 3, "(total, 3, heads, headdim)");
        var view = packed.Pick(0, 2, 3);
        var shape = ShapeValidator.Varlen(view, view, view, cuSeqlens, cuSeqlens, maxSeqlen, maxSeqlen, options, typeof(T));
        fixed (T* p = qkv)
        {
            var q = Operand<T>.Of(p, view);
            return RunForward(shape, options, q, q.Offset(packed.Strides[1]), q.Offset(2 * packed.Strides[1]), view.Lengths, cancellationToken);
        }
    }

    /// <summary>Varlen attention of q over a packed kv tensor (flash-attn's <c>flash_attn_varlen_kvpacked_func</c>).</summary>
    /// <param name="q">(total_q, heads_q, headdim).</param>
    /// <param name="kv">(total_k, 2, heads_kv, headdim).</param>
    /// <param name="cuSeqlensQ">batch + 1 cumulative query offsets.</param>
    /// <param name="cuSeqlensK">batch + 1 cumulative key offsets.</param>
    /// <param name="maxSeqlenQ">The longest query sequence.</param>
    /// <param name="maxSeqlenK">The longest key sequence.</param>
    /// <param name="options">Attention options; null for the defaults.</param>
    /// <param name="cancellationToken">Cancels long CPU work.</param>
    public static AttentionResult<T> ForwardVarlenKvPacked<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> kv, ReadOnlySpan<int> cuSeqlensQ,
        ReadOnlySpan<int> cuSeqlensK, int maxSeqlenQ, int maxSeqlenK, AttentionOptions? options = null,
        CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var qa = TensorArg.Of(q, nameof(q));
        var packed = Packed(TensorArg.Of(kv, nameof(kv)), 4, 2, "(total_k, 2, heads_kv, headdim)");
        var kView = packed.Pick(0, 2, 3);
        var shape = ShapeValidator.Varlen(qa, kView, kView, cuSeqlensQ, cuSeqlensK, maxSeqlenQ, maxSeqlenK, options, typeof(T));
        fixed (T* pq = q)
        fixed (T* pkv = kv)
        {
            var k = Operand<T>.Of(pkv, kView);
            return RunForward(shape, options, Operand<T>.Of(pq, qa), k, k.Offset(packed.Strides[1]), qa.Lengths, cancellationToken);
        }
    }

    /// <summary>Gradients of <see cref="ForwardVarlen{T}(ReadOnlyTensorSpan{T}, ReadOnlyTensorSpan{T}, ReadOnlyTensorSpan{T}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, AttentionOptions?, CancellationToken)"/> (flash-attn's varlen backward).</summary>
    /// <param name="dOut">Gradient of the output, (total_q, heads_q, headdim).</param>
    /// <param name="q">The forward's q.</param>
    /// <param name="k">The forward's k.</param>
    /// <param name="v">The forward's v.</param>
    /// <param name="output">The forward's output.</param>
    /// <param name="logSumExp">The forward's log-sum-exp, (heads_q, total_q).</param>
    /// <param name="cuSeqlensQ">The forward's query offsets.</param>
    /// <param name="cuSeqlensK">The forward's key offsets.</param>
    /// <param name="maxSeqlenQ">The longest query sequence.</param>
    /// <param name="maxSeqlenK">The longest key sequence.</param>
    /// <param name="options">The options forward ran with.</param>
    /// <param name="dropoutState">The forward result's DropoutState when dropout is on.</param>
    /// <param name="cancellationToken">Cancels long CPU work.</param>
    public static AttentionGradients<T> BackwardVarlen<T>(ReadOnlyTensorSpan<T> dOut, ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k,
        ReadOnlyTensorSpan<T> v, ReadOnlyTensorSpan<T> output, ReadOnlyTensorSpan<float> logSumExp, ReadOnlySpan<int> cuSeqlensQ,
        ReadOnlySpan<int> cuSeqlensK, int maxSeqlenQ, int maxSeqlenK, AttentionOptions? options = null, DropoutState? dropoutState = null,
        CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        TensorArg qa = TensorArg.Of(q, nameof(q)), ka = TensorArg.Of(k, nameof(k)), va = TensorArg.Of(v, nameof(v));
        var shape = ShapeValidator.Varlen(qa, ka, va, cuSeqlensQ, cuSeqlensK, maxSeqlenQ, maxSeqlenK, options, typeof(T));
        TensorArg da = TensorArg.Of(dOut, nameof(dOut)), oa = TensorArg.Of(output, nameof(output)), la = TensorArg.Of(logSumExp, nameof(logSumExp));
        ShapeValidator.Backward(shape, qa, da, oa, la);
        var dq = Tensor.CreateFromShape<T>(qa.Lengths, pinned: true);
        var dk = Tensor.CreateFromShape<T>(ka.Lengths, pinned: true);
        var dv = Tensor.CreateFromShape<T>(va.Lengths, pinned: true);
        fixed (T* pd = dOut)
        fixed (T* pq = q)
        fixed (T* pk = k)
        fixed (T* pv = v)
        fixed (T* po = output)
        fixed (float* pl = logSumExp)
            RunBackward(shape, options, dropoutState, Operand<T>.Of(pd, da), Operand<T>.Of(pq, qa), Operand<T>.Of(pk, ka), Operand<T>.Of(pv, va),
                Operand<T>.Of(po, oa), LseOperand.Of(pl, la),
                Operand<T>.Of(Pin(dq), Describe(dq, "dq")), Operand<T>.Of(Pin(dk), Describe(dk, "dk")), Operand<T>.Of(Pin(dv), Describe(dv, "dv")),
                cancellationToken);
        return new AttentionGradients<T>(dq, dk, dv);
    }

    /// <summary>Gradient of <see cref="ForwardVarlenQkvPacked{T}"/>: one packed (total, 3, heads, headdim) dQKV.</summary>
    /// <param name="dOut">Gradient of the output, (total, heads, headdim).</param>
    /// <param name="qkv">The forward's packed tensor.</param>
    /// <param name="output">The forward's output.</param>
    /// <param name="logSumExp">The forward's log-sum-exp, (heads, total).</param>
    /// <param name="cuSeqlens">The forward's offsets.</param>
    /// <param name="maxSeqlen">The longest sequence.</param>
    /// <param name="options">The options forward ran with.</param>
    /// <param name="dropoutState">The forward result's DropoutState when dropout is on.</param>
    /// <param name="cancellationToken">Cancels long CPU work.</param>
    public static QkvPackedGradients<T> BackwardVarlenQkvPacked<T>(ReadOnlyTensorSpan<T> dOut, ReadOnlyTensorSpan<T> qkv, ReadOnlyTensorSpan<T> output,
        ReadOnlyTensorSpan<float> logSumExp, ReadOnlySpan<int> cuSeqlens, int maxSeqlen, AttentionOptions? options = null,
        DropoutState? dropoutState = null, CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var packed = Packed(TensorArg.Of(qkv, nameof(qkv)), 4, 3, "(total, 3, heads, headdim)");
        var view = packed.Pick(0, 2, 3);
        var shape = ShapeValidator.Varlen(view, view, view, cuSeqlens, cuSeqlens, maxSeqlen, maxSeqlen, options, typeof(T));
        TensorArg da = TensorArg.Of(dOut, nameof(dOut)), oa = TensorArg.Of(output, nameof(output)), la = TensorArg.Of(logSumExp, nameof(logSumExp));
        ShapeValidator.Backward(shape, view, da, oa, la);
        var dqkv = Tensor.CreateFromShape<T>(packed.Lengths, pinned: true);
        var gradPacked = Describe(dqkv, "dqkv");
        var dq = Operand<T>.Of(Pin(dqkv), gradPacked.Pick(0, 2, 3));
        fixed (T* pd = dOut)
        fixed (T* p = qkv)
        fixed (T* po = output)
        fixed (float* pl = logSumExp)
        {
            var q = Operand<T>.Of(p, view);
            RunBackward(shape, options, dropoutState, Operand<T>.Of(pd, da), q, q.Offset(packed.Strides[1]), q.Offset(2 * packed.Strides[1]),
                Operand<T>.Of(po, oa), LseOperand.Of(pl, la), dq, dq.Offset(gradPacked.Strides[1]), dq.Offset(2 * gradPacked.Strides[1]), cancellationToken);
        }
        return new QkvPackedGradients<T>(dqkv);
    }

    /// <summary>Gradients of <see cref="ForwardVarlenKvPacked{T}"/>: dQ and a packed (total_k, 2, heads_kv, headdim) dKV.</summary>
    /// <param name="dOut">Gradient of the output, (total_q, heads_q, headdim).</param>
    /// <param name="q">The forward's q.</param>
    /// <param name="kv">The forward's packed kv tensor.</param>
    /// <param name="output">The forward's output.</param>
    /// <param name="logSumExp">The forward's log-sum-exp, (heads_q, total_q).</param>
    /// <param name="cuSeqlensQ">The forward's query offsets.</param>
    /// <param name="cuSeqlensK">The forward's key offsets.</param>
    /// <param name="maxSeqlenQ">The longest query sequence.</param>
    /// <param name="maxSeqlenK">The longest key sequence.</param>
    /// <param name="options">The options forward ran with.</param>
    /// <param name="dropoutState">The forward result's DropoutState when dropout is on.</param>
    /// <param name="cancellationToken">Cancels long CPU work.</param>
    public static KvPackedGradients<T> BackwardVarlenKvPacked<T>(ReadOnlyTensorSpan<T> dOut, ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> kv,
        ReadOnlyTensorSpan<T> output, ReadOnlyTensorSpan<float> logSumExp, ReadOnlySpan<int> cuSeqlensQ, ReadOnlySpan<int> cuSeqlensK,
        int maxSeqlenQ, int maxSeqlenK, AttentionOptions? options = null, DropoutState? dropoutState = null,
        CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var qa = TensorArg.Of(q, nameof(q));
        var packed = Packed(TensorArg.Of(kv, nameof(kv)), 4, 2, "(total_k, 2, heads_kv, headdim)");
        var kView = packed.Pick(0, 2, 3);
        var shape = ShapeValidator.Varlen(qa, kView, kView, cuSeqlensQ, cuSeqlensK, maxSeqlenQ, maxSeqlenK, options, typeof(T));
        TensorArg da = TensorArg.Of(dOut, nameof(dOut)), oa = TensorArg.Of(output, nameof(output)), la = TensorArg.Of(logSumExp, nameof(logSumExp));
        ShapeValidator.Backward(shape, qa, da, oa, la);
        var dq = Tensor.CreateFromShape<T>(qa.Lengths, pinned: true);
        var dkv = Tensor.CreateFromShape<T>(packed.Lengths, pinned: true);
        var gradPacked = Describe(dkv, "dkv");
        var dk = Operand<T>.Of(Pin(dkv), gradPacked.Pick(0, 2, 3));
        fixed (T* pd = dOut)
        fixed (T* pq = q)
        fixed (T* pkv = kv)
        fixed (T* po = output)
        fixed (float* pl = logSumExp)
        {
            var k = Operand<T>.Of(pkv, kView);
            RunBackward(shape, options, dropoutState, Operand<T>.Of(pd, da), Operand<T>.Of(pq, qa), k, k.Offset(packed.Strides[1]),
                Operand<T>.Of(po, oa), LseOperand.Of(pl, la), Operand<T>.Of(Pin(dq), Describe(dq, "dq")), dk, dk.Offset(gradPacked.Strides[1]),
                cancellationToken);
        }
        return new KvPackedGradients<T>(dq, dkv);
    }
}
