using System.Numerics.Tensors;
using FlashAttn.Validation;

namespace FlashAttn;

public static unsafe partial class FlashAttention
{
    /// <summary>
    /// Gradients of <see cref="Forward{T}(System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, AttentionOptions?, CancellationToken)"/> (flash-attn's <c>_flash_attn_backward</c>): recomputes the attention
    /// probabilities block by block from q, k and the saved log-sum-exp, so memory stays linear in sequence length.
    /// </summary>
    /// <param name="dOut">Gradient of the output, shaped like q.</param>
    /// <param name="q">The forward's q.</param>
    /// <param name="k">The forward's k.</param>
    /// <param name="v">The forward's v.</param>
    /// <param name="output">The forward's output.</param>
    /// <param name="logSumExp">The forward's log-sum-exp, (batch, heads_q, seqlen_q).</param>
    /// <param name="options">The options forward ran with.</param>
    /// <param name="dropoutState">The forward result's DropoutState, required when dropout is on (or set it in the options).</param>
    /// <param name="cancellationToken">Cancels long CPU work.</param>
    /// <returns>dQ, dK, dV; dK and dV summed over each GQA group.</returns>
    public static AttentionGradients<T> Backward<T>(ReadOnlyTensorSpan<T> dOut, ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k,
        ReadOnlyTensorSpan<T> v, ReadOnlyTensorSpan<T> output, ReadOnlyTensorSpan<float> logSumExp, AttentionOptions? options = null,
        DropoutState? dropoutState = null, CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        TensorArg qa = TensorArg.Of(q, nameof(q)), ka = TensorArg.Of(k, nameof(k)), va = TensorArg.Of(v, nameof(v));
        var shape = ShapeValidator.Fixed(qa, ka, va, options, typeof(T));
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

    /// <summary>Gradient of <see cref="ForwardQkvPacked{T}"/> (flash-attn's qkvpacked backward): one packed dQKV tensor.</summary>
    /// <param name="dOut">Gradient of the output, (batch, seqlen, heads, headdim).</param>
    /// <param name="qkv">The forward's packed (batch, seqlen, 3, heads, headdim) tensor.</param>
    /// <param name="output">The forward's output.</param>
    /// <param name="logSumExp">The forward's log-sum-exp.</param>
    /// <param name="options">The options forward ran with.</param>
    /// <param name="dropoutState">The forward result's DropoutState when dropout is on.</param>
    /// <param name="cancellationToken">Cancels long CPU work.</param>
    public static QkvPackedGradients<T> BackwardQkvPacked<T>(ReadOnlyTensorSpan<T> dOut, ReadOnlyTensorSpan<T> qkv, ReadOnlyTensorSpan<T> output,
        ReadOnlyTensorSpan<float> logSumExp, AttentionOptions? options = null, DropoutState? dropoutState = null,
        CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var packed = Packed(TensorArg.Of(qkv, nameof(qkv)), 5, 3, "(batch, seqlen, 3, heads, headdim)");
        var view = packed.Pick(0, 1, 3, 4);
        var shape = ShapeValidator.Fixed(view, view, view, options, typeof(T));
        TensorArg da = TensorArg.Of(dOut, nameof(dOut)), oa = TensorArg.Of(output, nameof(output)), la = TensorArg.Of(logSumExp, nameof(logSumExp));
        ShapeValidator.Backward(shape, view, da, oa, la);
        var dqkv = Tensor.CreateFromShape<T>(packed.Lengths, pinned: true);
        var gradPacked = Describe(dqkv, "dqkv");
        var dq = Operand<T>.Of(Pin(dqkv), gradPacked.Pick(0, 1, 3, 4));
        fixed (T* pd = dOut)
        fixed (T* p = qkv)
        fixed (T* po = output)
        fixed (float* pl = logSumExp)
        {
            var q = Operand<T>.Of(p, view);
            RunBackward(shape, options, dropoutState, Operand<T>.Of(pd, da), q, q.Offset(packed.Strides[2]), q.Offset(2 * packed.Strides[2]),
                Operand<T>.Of(po, oa), LseOperand.Of(pl, la), dq, dq.Offset(gradPacked.Strides[2]), dq.Offset(2 * gradPacked.Strides[2]), cancellationToken);
        }
        return new QkvPackedGradients<T>(dqkv);
    }

    /// <summary>Gradients of <see cref="ForwardKvPacked{T}"/> (flash-attn's kvpacked backward): dQ and a packed dKV.</summary>
    /// <param name="dOut">Gradient of the output, shaped like q.</param>
    /// <param name="q">The forward's q.</param>
    /// <param name="kv">The forward's packed (batch, seqlen_k, 2, heads_kv, headdim) tensor.</param>
    /// <param name="output">The forward's output.</param>
    /// <param name="logSumExp">The forward's log-sum-exp.</param>
    /// <param name="options">The options forward ran with.</param>
    /// <param name="dropoutState">The forward result's DropoutState when dropout is on.</param>
    /// <param name="cancellationToken">Cancels long CPU work.</param>
    public static KvPackedGradients<T> BackwardKvPacked<T>(ReadOnlyTensorSpan<T> dOut, ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> kv,
        ReadOnlyTensorSpan<T> output, ReadOnlyTensorSpan<float> logSumExp, AttentionOptions? options = null, DropoutState? dropoutState = null,
        CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var qa = TensorArg.Of(q, nameof(q));
        var packed = Packed(TensorArg.Of(kv, nameof(kv)), 5, 2, "(batch, seqlen_k, 2, heads_kv, headdim)");
        var kView = packed.Pick(0, 1, 3, 4);
        var shape = ShapeValidator.Fixed(qa, kView, kView, options, typeof(T));
        TensorArg da = TensorArg.Of(dOut, nameof(dOut)), oa = TensorArg.Of(output, nameof(output)), la = TensorArg.Of(logSumExp, nameof(logSumExp));
        ShapeValidator.Backward(shape, qa, da, oa, la);
        var dq = Tensor.CreateFromShape<T>(qa.Lengths, pinned: true);
        var dkv = Tensor.CreateFromShape<T>(packed.Lengths, pinned: true);
        var gradPacked = Describe(dkv, "dkv");
        var dk = Operand<T>.Of(Pin(dkv), gradPacked.Pick(0, 1, 3, 4));
        fixed (T* pd = dOut)
        fixed (T* pq = q)
        fixed (T* pkv = kv)
        fixed (T* po = output)
        fixed (float* pl = logSumExp)
        {
            var k = Operand<T>.Of(pkv, kView);
            RunBackward(shape, options, dropoutState, Operand<T>.Of(pd, da), Operand<T>.Of(pq, qa), k, k.Offset(packed.Strides[2]),
                Operand<T>.Of(po, oa), LseOperand.Of(pl, la), Operand<T>.Of(Pin(dq), Describe(dq, "dq")), dk, dk.Offset(gradPacked.Strides[2]),
                cancellationToken);
        }
        return new KvPackedGradients<T>(dq, dkv);
    }
}
