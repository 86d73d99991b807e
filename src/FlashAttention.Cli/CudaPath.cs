using System.Numerics.Tensors;
using FlashAttn.Cuda;

namespace FlashAttn.Cli;

/// <summary>The CUDA path: host tensors uploaded, the FlashAttention-2 kernels on the GPU, results downloaded.
/// Every option runs on the GPU; fp32 stays on the CPU path.</summary>
internal sealed class CudaPath(CudaDevice device) : IExecutionPath
{
    public CudaDevice Device => device;

    public string Name => "cuda";

    public string Description => $"{device.Name}, {device.Architecture}, {device.MultiprocessorCount} SMs";

    public string? ForwardGap(ElementType type, AttentionOptions options) =>
        type == ElementType.Fp32 ? "fp32 runs on the CPU path only" : null;

    public AttentionResult<T> Forward<T>(Tensor<T> q, Tensor<T> k, Tensor<T> v, AttentionOptions options, CancellationToken ct) where T : unmanaged
    {
        using var dq = CudaTensor<T>.FromHost(q, device);
        using var dk = CudaTensor<T>.FromHost(k, device);
        using var dv = CudaTensor<T>.FromHost(v, device);
        using var result = FlashAttention.Forward(dq, dk, dv, options);
        return new AttentionResult<T>(result.Output.ToHost(), result.LogSumExp.ToHost(), result.DropoutState, null);
    }

    public void ForwardInto<T>(Tensor<T> q, Tensor<T> k, Tensor<T> v, Tensor<T> output, Tensor<float> logSumExp, AttentionOptions options,
        CancellationToken ct) where T : unmanaged
    {
        var result = Forward(q, k, v, options, ct);
        result.Output.CopyTo(output);
        result.LogSumExp.CopyTo(logSumExp);
    }

    public AttentionGradients<T> Backward<T>(Tensor<T> dOut, Tensor<T> q, Tensor<T> k, Tensor<T> v, Tensor<T> output, Tensor<float> logSumExp,
        AttentionOptions options, DropoutState? dropoutState, CancellationToken ct) where T : unmanaged
    {
        using var dd = CudaTensor<T>.FromHost(dOut, device);
        using var dq = CudaTensor<T>.FromHost(q, device);
        using var dk = CudaTensor<T>.FromHost(k, device);
        using var dv = CudaTensor<T>.FromHost(v, device);
        using var o = CudaTensor<T>.FromHost(output, device);
        using var lse = CudaTensor<float>.FromHost(logSumExp, device);
        using var grads = FlashAttention.Backward(dd, dq, dk, dv, o, lse, options, dropoutState);
        return new AttentionGradients<T>(grads.DQ.ToHost(), grads.DK.ToHost(), grads.DV.ToHost());
    }

    public AttentionResult<T> ForwardWithKvCache<T>(Tensor<T> q, Tensor<T> kCache, Tensor<T> vCache, Tensor<T> kNew, Tensor<T> vNew, int[] cacheSeqlens,
        Tensor<int> blockTable, Tensor<T> rotaryCos, Tensor<T> rotarySin, AttentionOptions options, CancellationToken ct) where T : unmanaged
    {
        using var dq = CudaTensor<T>.FromHost(q, device);
        using var dkCache = CudaTensor<T>.FromHost(kCache, device);
        using var dvCache = CudaTensor<T>.FromHost(vCache, device);
        using var dkNew = CudaTensor<T>.FromHost(kNew, device);
        using var dvNew = CudaTensor<T>.FromHost(vNew, device);
        using var seqlens = CudaTensor<int>.FromHost(Tensor.Create(cacheSeqlens, [cacheSeqlens.Length]), device);
        using var table = CudaTensor<int>.FromHost(blockTable, device);
        using var cos = CudaTensor<T>.FromHost(rotaryCos, device);
        using var sin = CudaTensor<T>.FromHost(rotarySin, device);
        using var result = FlashAttention.ForwardWithKvCache(dq, dkCache, dvCache, dkNew, dvNew, seqlens, blockTable: table, rotaryCos: cos,
            rotarySin: sin, options: options);
        // The append happened in device memory: bring the caches back, as the CPU path leaves them in place.
        dkCache.ToHost().CopyTo(kCache);
        dvCache.ToHost().CopyTo(vCache);
        return new AttentionResult<T>(result.Output.ToHost(), result.LogSumExp.ToHost(), null, null);
    }
}
