using FlashAttn.Cuda;
using FlashAttn.Validation;

namespace FlashAttn;

public static partial class FlashAttention
{
    /// <summary>
    /// Variable-length attention on the GPU (flash-attn's <c>flash_attn_varlen_func</c>): sequences concatenated along the token
    /// dimension, sequence b holding query rows cuSeqlensQ[b] .. cuSeqlensQ[b + 1] - 1 and key rows likewise. No padding work is
    /// done: each thread block works inside one sequence. Packed layouts are views: pass q, k, v as strided views of one
    /// (total, 3, heads, d) allocation (<see cref="CudaTensor{T}.View(nint, ReadOnlySpan{nint}, ReadOnlySpan{nint})"/>).
    /// </summary>
    /// <param name="q">(total_q, heads_q, headdim), System.Half or BFloat16.</param>
    /// <param name="k">(total_k, heads_kv, headdim); heads_kv divides heads_q.</param>
    /// <param name="v">Same shape as k.</param>
    /// <param name="cuSeqlensQ">batch + 1 int32 cumulative query offsets on the device (0, ..., total_q). As in flash-attn they are not
    /// read back; the kernels clamp them to [0, total_q] and each length to <paramref name="maxSeqlenQ"/>.</param>
    /// <param name="cuSeqlensK">batch + 1 int32 cumulative key offsets on the device (0, ..., total_k).</param>
    /// <param name="maxSeqlenQ">The longest query sequence (sizes the grid).</param>
    /// <param name="maxSeqlenK">The longest key sequence.</param>
    /// <param name="options">As for the fixed-length Forward; masks and ALiBi align per sequence, (batch, heads) slopes index sequences.
    /// ReturnProbabilities is fixed-length only.</param>
    /// <param name="stream">The stream to launch on; null for the legacy default stream.</param>
    /// <returns>Output (total_q, heads_q, headdim) and log-sum-exp (heads_q, total_q).</returns>
    public static CudaAttentionResult<T> ForwardVarlen<T>(CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, CudaTensor<int> cuSeqlensQ,
        CudaTensor<int> cuSeqlensK, int maxSeqlenQ, int maxSeqlenK, AttentionOptions? options = null, CudaStream? stream = null) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var shape = ValidateCudaVarlen(q, k, v, cuSeqlensQ, cuSeqlensK, maxSeqlenQ, maxSeqlenK, options);
        if (options.ReturnProbabilities)
            throw new ArgumentException("ReturnProbabilities is for fixed-length batches (a dense (batch, heads, seqlen_q, seqlen_k) P); " +
                "call Forward per sequence, or the CPU ForwardVarlen.", nameof(options));
        var output = CudaTensor<T>.Allocate(q.Lengths);
        CudaTensor<float>? lse = null;
        try
        {
            lse = CudaTensor<float>.Allocate(LseLengths(shape));
            var dropoutState = RunCudaForward(shape, options, q, k, v, output, lse, null, stream, cuSeqlensQ, cuSeqlensK);
            return new CudaAttentionResult<T>(output, lse, dropoutState, null);
        }
        catch
        {
            output.Dispose();
            lse?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// <see cref="ForwardVarlen{T}(CudaTensor{T}, CudaTensor{T}, CudaTensor{T}, CudaTensor{int}, CudaTensor{int}, int, int, AttentionOptions?, CudaStream?)"/>
    /// into caller-owned device tensors (flash-attn's <c>out=</c>); nothing is written when validation fails.
    /// </summary>
    /// <param name="q">(total_q, heads_q, headdim).</param>
    /// <param name="k">(total_k, heads_kv, headdim).</param>
    /// <param name="v">Same shape as k.</param>
    /// <param name="cuSeqlensQ">batch + 1 int32 cumulative query offsets on the device.</param>
    /// <param name="cuSeqlensK">batch + 1 int32 cumulative key offsets on the device.</param>
    /// <param name="maxSeqlenQ">The longest query sequence.</param>
    /// <param name="maxSeqlenK">The longest key sequence.</param>
    /// <param name="output">Receives O, shaped like q (headdim contiguous).</param>
    /// <param name="logSumExp">Receives the fp32 log-sum-exp, (heads_q, total_q), last dimension contiguous.</param>
    /// <param name="options">Attention options; ReturnProbabilities is rejected.</param>
    /// <param name="stream">The stream to launch on; null for the legacy default stream.</param>
    /// <returns>The dropout state used (pass it to backward), or null when dropout is off.</returns>
    public static DropoutState? ForwardVarlenInto<T>(CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, CudaTensor<int> cuSeqlensQ,
        CudaTensor<int> cuSeqlensK, int maxSeqlenQ, int maxSeqlenK, CudaTensor<T> output, CudaTensor<float> logSumExp,
        AttentionOptions? options = null, CudaStream? stream = null) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var shape = ValidateCudaVarlen(q, k, v, cuSeqlensQ, cuSeqlensK, maxSeqlenQ, maxSeqlenK, options);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(logSumExp);
        var qa = Describe(q, nameof(q));
        ShapeValidator.Backward(shape, qa, Describe(output, nameof(output)), Describe(output, nameof(output)), Describe(logSumExp, nameof(logSumExp)));
        if (options.ReturnProbabilities)
            throw new ArgumentException("ReturnProbabilities is for fixed-length batches.", nameof(options));
        return RunCudaForward(shape, options, q, k, v, output, logSumExp, null, stream, cuSeqlensQ, cuSeqlensK);
    }

    /// <summary>
    /// Gradients of <see cref="ForwardVarlen{T}(CudaTensor{T}, CudaTensor{T}, CudaTensor{T}, CudaTensor{int}, CudaTensor{int}, int, int, AttentionOptions?, CudaStream?)"/> (flash-attn's varlen backward) into caller-owned tensors (e.g. views of one
    /// packed dQKV allocation); nothing is written when validation fails.
    /// </summary>
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
    /// <param name="dq">Receives dQ, shaped like q.</param>
    /// <param name="dk">Receives dK, shaped like k.</param>
    /// <param name="dv">Receives dV, shaped like v.</param>
    /// <param name="options">The options forward ran with.</param>
    /// <param name="dropoutState">The forward result's DropoutState when dropout is on.</param>
    /// <param name="stream">The stream to launch on; null for the legacy default stream.</param>
    public static void BackwardVarlenInto<T>(CudaTensor<T> dOut, CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, CudaTensor<T> output,
        CudaTensor<float> logSumExp, CudaTensor<int> cuSeqlensQ, CudaTensor<int> cuSeqlensK, int maxSeqlenQ, int maxSeqlenK, CudaTensor<T> dq,
        CudaTensor<T> dk, CudaTensor<T> dv, AttentionOptions? options = null, DropoutState? dropoutState = null, CudaStream? stream = null)
        where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var shape = ValidateCudaVarlen(q, k, v, cuSeqlensQ, cuSeqlensK, maxSeqlenQ, maxSeqlenK, options);
        RunCudaBackward(shape, options, dropoutState, stream, dOut, q, k, v, output, logSumExp, dq, dk, dv, cuSeqlensQ, cuSeqlensK);
    }

    /// <summary>Allocating form of <see cref="BackwardVarlenInto{T}"/>.</summary>
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
    /// <param name="stream">The stream to launch on; null for the legacy default stream.</param>
    public static CudaAttentionGradients<T> BackwardVarlen<T>(CudaTensor<T> dOut, CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v,
        CudaTensor<T> output, CudaTensor<float> logSumExp, CudaTensor<int> cuSeqlensQ, CudaTensor<int> cuSeqlensK, int maxSeqlenQ, int maxSeqlenK,
        AttentionOptions? options = null, DropoutState? dropoutState = null, CudaStream? stream = null) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        CudaTensor<T>? dq = null, dk = null, dv = null;
        try
        {
            dq = CudaTensor<T>.Allocate(q.Lengths, q.Device);
            dk = CudaTensor<T>.Allocate(k.Lengths, q.Device);
            dv = CudaTensor<T>.Allocate(v.Lengths, q.Device);
            BackwardVarlenInto(dOut, q, k, v, output, logSumExp, cuSeqlensQ, cuSeqlensK, maxSeqlenQ, maxSeqlenK, dq, dk, dv, options, dropoutState, stream);
            return new CudaAttentionGradients<T>(dq, dk, dv);
        }
        catch
        {
            dq?.Dispose();
            dk?.Dispose();
            dv?.Dispose();
            throw;
        }
    }

    private static ProblemShape ValidateCudaVarlen<T>(CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, CudaTensor<int> cuSeqlensQ,
        CudaTensor<int> cuSeqlensK, int maxSeqlenQ, int maxSeqlenK, AttentionOptions options) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        ArgumentNullException.ThrowIfNull(cuSeqlensQ);
        ArgumentNullException.ThrowIfNull(cuSeqlensK);
        if (typeof(T) != typeof(Half) && typeof(T) != typeof(BFloat16))
            throw new ArgumentException($"element type {typeof(T).Name} is not supported by the CUDA kernels; use System.Half or FlashAttn.BFloat16.", nameof(q));
        return ShapeValidator.DeviceVarlen(Describe(q, nameof(q)), Describe(k, nameof(k)), Describe(v, nameof(v)),
            Describe(cuSeqlensQ, nameof(cuSeqlensQ)), Describe(cuSeqlensK, nameof(cuSeqlensK)), maxSeqlenQ, maxSeqlenK, options, typeof(T));
    }
}
