using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// The custom autograd function of the varlen entry points (the counterpart of flash-attn's <c>FlashAttnVarlenFunc</c>,
/// <c>FlashAttnVarlenQKVPackedFunc</c> and <c>FlashAttnVarlenKVPackedFunc</c>). Its arguments are the tensor inputs
/// (q, k, v / qkv / q, kv), cu_seqlens_q, cu_seqlens_k and the <see cref="VarlenCall"/>; forward saves the inputs, O, the
/// LSE and both offset tensors (as flash-attn does), backward returns one gradient per argument (null for the offsets
/// and the call).
/// </summary>
internal sealed class VarlenFunction : torch.autograd.SingleTensorFunction<VarlenFunction>
{
    private const string CallKey = "flash_attn_varlen_call";

    /// <summary>Arguments after the tensor inputs: cu_seqlens_q, cu_seqlens_k and the call.</summary>
    private const int TrailingArguments = 3;

    /// <inheritdoc />
    public override string Name => "FlashAttentionVarlenBackward";

    /// <inheritdoc />
    public override torch.Tensor forward(torch.autograd.AutogradContext ctx, params object[] vars)
    {
        var call = (VarlenCall)vars[^1];
        int n = call.InputCount;
        var inputs = new torch.Tensor[n];
        for (int i = 0; i < n; i++)
            inputs[i] = TorchTensors.MaybeContiguous((torch.Tensor)vars[i]);
        // The CUDA kernels read the offsets with stride 1; flash-attn requires contiguous cu_seqlens too.
        var cuSeqlensQ = Contiguous((torch.Tensor)vars[n]);
        var cuSeqlensK = ReferenceEquals(vars[n], vars[n + 1]) ? cuSeqlensQ : Contiguous((torch.Tensor)vars[n + 1]);
        var (output, logSumExp) = VarlenKernels.Forward(call, inputs, cuSeqlensQ, cuSeqlensK);
        ctx.save_for_backward([.. inputs, output, logSumExp, cuSeqlensQ, cuSeqlensK]);
        ctx.save_data(CallKey, call);
        call.LogSumExp = logSumExp;
        return output;
    }

    /// <summary>Runs inside libtorch's autograd engine (see <see cref="EngineBackward"/>): one gradient per tensor input, nulls
    /// for the two offset tensors and the call.</summary>
    public override List<torch.Tensor> backward(torch.autograd.AutogradContext ctx, torch.Tensor grad_output)
    {
        var call = (VarlenCall)ctx.get_data(CallKey);
        int n = call.InputCount;
        return EngineBackward.Run(ctx, grad_output, n, TrailingArguments,
            saved => VarlenKernels.Backward(call, grad_output, saved.GetRange(0, n), saved[n], saved[n + 1], saved[n + 2], saved[n + 3]));
    }

    private static torch.Tensor Contiguous(torch.Tensor tensor) => tensor.is_contiguous() ? tensor : tensor.contiguous();
}
