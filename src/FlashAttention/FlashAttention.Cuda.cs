using FlashAttn.Cuda;
using FlashAttn.Validation;

namespace FlashAttn;

public static partial class FlashAttention
{
    /// <summary>
    /// Attention over separate q, k, v in GPU memory (flash-attn's <c>flash_attn_func</c>), on the FlashAttention-2
    /// CUDA kernels. Launches asynchronously on <paramref name="stream"/> (default: the legacy default stream,
    /// the one libtorch uses unless told otherwise).
    /// </summary>
    /// <param name="q">(batch, seqlen_q, heads_q, headdim), System.Half or BFloat16, headdim 1..256 and contiguous.</param>
    /// <param name="k">(batch, seqlen_k, heads_kv, headdim); heads_kv divides heads_q.</param>
    /// <param name="v">Same shape as k.</param>
    /// <param name="options">Every option runs on the GPU: causal, scale, window, softcap, ALiBi (host slopes, uploaded per call),
    /// dropout (the same Philox mask as the CPU path) and <see cref="AttentionOptions.ReturnProbabilities"/> (into
    /// <see cref="CudaAttentionResult{T}.Probabilities"/>).</param>
    /// <param name="stream">The stream to launch on; null for the legacy default stream.</param>
    public static CudaAttentionResult<T> Forward<T>(CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, AttentionOptions? options = null,
        CudaStream? stream = null) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var (shape, qa) = ValidateCuda(q, k, v, options);
        var output = CudaTensor<T>.Allocate(qa.Lengths);
        CudaTensor<float>? lse = null, probabilities = null;
        try
        {
            lse = CudaTensor<float>.Allocate(LseLengths(shape));
            if (options.ReturnProbabilities)
                probabilities = CudaTensor<float>.Allocate([shape.Batch, shape.HeadsQ, shape.MaxSeqlenQ, shape.MaxSeqlenK]);
            var dropoutState = RunCudaForward(shape, options, q, k, v, output, lse, probabilities, stream);
            return new CudaAttentionResult<T>(output, lse, dropoutState, probabilities);
        }
        catch
        {
            output.Dispose();
            lse?.Dispose();
            probabilities?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// <see cref="Forward{T}(CudaTensor{T}, CudaTensor{T}, CudaTensor{T}, AttentionOptions?, CudaStream?)"/> into caller-owned
    /// device tensors (flash-attn's <c>out=</c>); nothing is written when validation fails.
    /// </summary>
    /// <param name="q">(batch, seqlen_q, heads_q, headdim).</param>
    /// <param name="k">(batch, seqlen_k, heads_kv, headdim).</param>
    /// <param name="v">Same shape as k.</param>
    /// <param name="output">Receives O, shaped like q (any strides with headdim contiguous).</param>
    /// <param name="logSumExp">Receives the fp32 log-sum-exp, (batch, heads_q, seqlen_q), last dimension contiguous.</param>
    /// <param name="options">Attention options (see Forward); ReturnProbabilities needs the allocating Forward and is rejected here.</param>
    /// <param name="stream">The stream to launch on; null for the legacy default stream.</param>
    /// <returns>The dropout state used (pass it to backward), or null when dropout is off.</returns>
    public static DropoutState? ForwardInto<T>(CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, CudaTensor<T> output, CudaTensor<float> logSumExp,
        AttentionOptions? options = null, CudaStream? stream = null) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var (shape, qa) = ValidateCuda(q, k, v, options);
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(logSumExp);
        ShapeValidator.Backward(shape, qa, Describe(output, nameof(output)), Describe(output, nameof(output)), Describe(logSumExp, nameof(logSumExp)));
        if (options.ReturnProbabilities)
            throw new ArgumentException("ReturnProbabilities needs the allocating Forward overload.", nameof(options));
        return RunCudaForward(shape, options, q, k, v, output, logSumExp, null, stream);
    }

    private static (ProblemShape Shape, TensorArg Q) ValidateCuda<T>(CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, AttentionOptions options)
        where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(k);
        ArgumentNullException.ThrowIfNull(v);
        if (typeof(T) != typeof(Half) && typeof(T) != typeof(BFloat16))
            throw new ArgumentException($"element type {typeof(T).Name} is not supported by the CUDA kernels; use System.Half or FlashAttn.BFloat16 (float runs on the CPU path).", nameof(q));
        TensorArg qa = Describe(q, nameof(q)), ka = Describe(k, nameof(k)), va = Describe(v, nameof(v));
        var shape = ShapeValidator.Fixed(qa, ka, va, options, typeof(T));
        return (shape, qa);
    }

    /// <summary>Forward, then (when <paramref name="probabilities"/> is given) P from forward's LSE on the same stream.</summary>
    private static DropoutState? RunCudaForward<T>(ProblemShape shape, AttentionOptions options, CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v,
        CudaTensor<T> output, CudaTensor<float> lse, CudaTensor<float>? probabilities, CudaStream? stream, CudaTensor<int>? cuSeqlensQ = null,
        CudaTensor<int>? cuSeqlensK = null) where T : unmanaged
    {
        var device = CudaDevice.Default;
        device.MakeCurrent();
        DropoutState? dropoutState = options.DropoutProbability > 0f ? options.DropoutState ?? DropoutState.Next() : null;
        var settings = AttentionSettings.Resolve(options, shape, dropoutState);
        var lseOperand = DeviceLse(lse);
        var launchStream = stream ?? CudaStream.Legacy;
        CudaForward.Run<T>(device, shape, settings, DeviceOperand.Of(q), DeviceOperand.Of(k), DeviceOperand.Of(v), DeviceOperand.Of(output),
            lseOperand, launchStream, cuSeqlensQ?.DevicePointer ?? 0, cuSeqlensK?.DevicePointer ?? 0);
        if (probabilities is not null) // same stream, so it runs after forward has written the LSE
            CudaProbabilities.Run<T>(device, shape, settings, DeviceOperand.Of(q), DeviceOperand.Of(k), lseOperand, probabilities.DevicePointer,
                launchStream);
        return dropoutState;
    }

    /// <summary>The LSE as the kernels address it: (batch, heads_q, seqlen_q), or varlen's (heads_q, total_q) with batch stride 0.</summary>
    private static DeviceOperand DeviceLse(CudaTensor<float> lse) => lse.Rank == 2
        ? new DeviceOperand(lse.DevicePointer, 0, 1, lse.Strides[0])
        : new DeviceOperand(lse.DevicePointer, lse.Strides[0], 1, lse.Strides[1]);

    private static TensorArg Describe<T>(CudaTensor<T> tensor, string name) where T : unmanaged =>
        new(name, tensor.Lengths.ToArray(), tensor.Strides.ToArray());
}
