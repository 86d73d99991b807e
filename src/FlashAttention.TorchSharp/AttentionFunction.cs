using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// The custom autograd function (TorchSharp's <c>torch.autograd.SingleTensorFunction</c>, the counterpart of Python's
/// <c>torch.autograd.Function</c> that flash-attn's <c>FlashAttnFunc</c> subclasses). Its arguments are the tensor inputs
/// (q, k, v / qkv / q, kv) followed by the <see cref="AttentionCall"/>; forward saves the inputs, O and the LSE, and keeps
/// the call (options, dropout state) as context data; backward returns one gradient per argument (null for the call).
/// </summary>
internal sealed class AttentionFunction : torch.autograd.SingleTensorFunction<AttentionFunction>
{
    private const string CallKey = "flash_attn_call";

    /// <inheritdoc />
    public override string Name => "FlashAttentionBackward";

    /// <inheritdoc />
    public override torch.Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var call = (AttentionCall)vars[^1];
        var inputs = new torch.Tensor[call.InputCount];
        for (int i = 0; i < inputs.Length; i++)
            inputs[i] = TorchTensors.MaybeContiguous((torch.Tensor)vars[i]);
        var (output, logSumExp) = AttentionKernels.Forward(call, inputs);
        ctx.save_for_backward([.. inputs, output, logSumExp]);
        ctx.save_data(CallKey, call);
        return output;
    }

    /// <summary>Runs inside libtorch's autograd engine (see <see cref="EngineBackward"/>): one gradient per tensor input, null
    /// for the call.</summary>
    public override List<torch.Tensor> backward(torch.autograd.AutogradContext ctx, torch.Tensor grad_output)
    {
        var call = (AttentionCall)ctx.get_data(CallKey);
        int n = call.InputCount;
        return EngineBackward.Run(ctx, grad_output, n, trailingNulls: 1,
            saved => AttentionKernels.Backward(call, grad_output, saved.GetRange(0, n), saved[n], saved[n + 1]));
    }
}
