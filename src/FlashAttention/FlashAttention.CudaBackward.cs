using FlashAttn.Cuda;
using FlashAttn.Validation;

namespace FlashAttn;

public static partial class FlashAttention
{
    /// <summary>
    /// Gradients of the CUDA forward (flash-attn's <c>_flash_attn_backward</c>) on the FlashAttention-2 backward
    /// kernels: P is recomputed from q, k and the saved log-sum-exp, so memory stays linear in sequence length.
    /// Launches asynchronously on <paramref name="stream"/> (default: the legacy default stream).
    /// </summary>
    /// <param name="dOut">Gradient of the output, shaped like q.</param>
    /// <param name="q">The forward's q.</param>
    /// <param name="k">The forward's k.</param>
    /// <param name="v">The forward's v.</param>
    /// <param name="output">The forward's output.</param>
    /// <param name="logSumExp">The forward's log-sum-exp, (batch, heads_q, seqlen_q).</param>
    /// <param name="options">The options forward ran with.</param>
    /// <param name="dropoutState">The forward result's DropoutState when dropout is on.</param>
    /// <param name="stream">The stream to launch on; null for the legacy default stream.</param>
    public static CudaAttentionGradients<T> Backward<T>(CudaTensor<T> dOut, CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, CudaTensor<T> output,
        CudaTensor<float> logSumExp, AttentionOptions? options = null, DropoutState? dropoutState = null, CudaStream? stream = null) where T : unmanaged
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
            BackwardInto(dOut, q, k, v, output, logSumExp, dq, dk, dv, options, dropoutState, stream);
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

    /// <summary>
    /// <see cref="Backward{T}(CudaTensor{T}, CudaTensor{T}, CudaTensor{T}, CudaTensor{T}, CudaTensor{T}, CudaTensor{float}, AttentionOptions?, DropoutState?, CudaStream?)"/>
    /// into caller-owned gradient tensors (e.g. views over another framework's allocations); nothing is written when validation fails.
    /// </summary>
    /// <param name="dOut">Gradient of the output, shaped like q.</param>
    /// <param name="q">The forward's q.</param>
    /// <param name="k">The forward's k.</param>
    /// <param name="v">The forward's v.</param>
    /// <param name="output">The forward's output.</param>
    /// <param name="logSumExp">The forward's log-sum-exp, (batch, heads_q, seqlen_q).</param>
    /// <param name="dq">Receives dQ, shaped like q.</param>
    /// <param name="dk">Receives dK, shaped like k.</param>
    /// <param name="dv">Receives dV, shaped like v.</param>
    /// <param name="options">The options forward ran with.</param>
    /// <param name="dropoutState">The forward result's DropoutState when dropout is on.</param>
    /// <param name="stream">The stream to launch on; null for the legacy default stream.</param>
    public static void BackwardInto<T>(CudaTensor<T> dOut, CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, CudaTensor<T> output,
        CudaTensor<float> logSumExp, CudaTensor<T> dq, CudaTensor<T> dk, CudaTensor<T> dv, AttentionOptions? options = null,
        DropoutState? dropoutState = null, CudaStream? stream = null) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var (shape, _) = ValidateCuda(q, k, v, options);
        RunCudaBackward(shape, options, dropoutState, stream, dOut, q, k, v, output, logSumExp, dq, dk, dv);
    }

    /// <summary>Checks backward's extra tensors against the validated shape, then launches (fixed-length or varlen).</summary>
    private static void RunCudaBackward<T>(ProblemShape shape, AttentionOptions options, DropoutState? dropoutState, CudaStream? stream,
        CudaTensor<T> dOut, CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, CudaTensor<T> output, CudaTensor<float> logSumExp,
        CudaTensor<T> dq, CudaTensor<T> dk, CudaTensor<T> dv, CudaTensor<int>? cuSeqlensQ = null, CudaTensor<int>? cuSeqlensK = null)
        where T : unmanaged
    {
        foreach (var (tensor, name) in new[] { (dOut, nameof(dOut)), (output, nameof(output)), (dq, nameof(dq)), (dk, nameof(dk)), (dv, nameof(dv)) })
            if (tensor is null) throw new ArgumentNullException(name);
        ArgumentNullException.ThrowIfNull(logSumExp);
        var qa = Describe(q, nameof(q));
        ShapeValidator.Backward(shape, qa, Describe(dOut, nameof(dOut)), Describe(output, nameof(output)), Describe(logSumExp, nameof(logSumExp)));
        ShapeValidator.Backward(shape, qa, Describe(dq, nameof(dq)), Describe(dq, nameof(dq)), Describe(logSumExp, nameof(logSumExp)));
        var ka = Describe(k, nameof(k));
        foreach (var (gradient, name) in new[] { (dk, nameof(dk)), (dv, nameof(dv)) })
            if (!gradient.Lengths.SequenceEqual(ka.Lengths))
                throw new ArgumentException($"must have k's shape {ka.ShapeText}; got ({string.Join(", ", gradient.Lengths.ToArray())}).", name);
        var device = CudaDevice.Default;
        device.MakeCurrent();
        DropoutState? state = null;
        if (options.DropoutProbability > 0f)
            state = dropoutState ?? options.DropoutState
                ?? throw new ArgumentException("Dropout is on, so backward needs the Philox state forward used: pass the forward result's DropoutState.", nameof(dropoutState));
        var settings = AttentionSettings.Resolve(options, shape, state);
        CudaBackward.Run<T>(device, shape, settings, options.Deterministic, DeviceOperand.Of(dOut), DeviceOperand.Of(q), DeviceOperand.Of(k),
            DeviceOperand.Of(v), DeviceOperand.Of(output), DeviceLse(logSumExp), DeviceOperand.Of(dq), DeviceOperand.Of(dk), DeviceOperand.Of(dv),
            stream ?? CudaStream.Legacy, cuSeqlensQ?.DevicePointer ?? 0, cuSeqlensK?.DevicePointer ?? 0);
    }
}
