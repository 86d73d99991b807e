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
}
