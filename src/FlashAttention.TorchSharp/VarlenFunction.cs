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

    /// <summary>
    /// Runs inside libtorch's autograd engine, called from native code: an exception must not leave this method. A failure
    /// is recorded (<see cref="FlashAttentionTorch.LastBackwardException"/>) and answered with gradients of a wrong shape,
    /// which makes libtorch abort the backward pass, so <c>loss.backward()</c> throws instead of training on garbage.
    /// </summary>
    public override List<torch.Tensor> backward(torch.autograd.AutogradContext ctx, torch.Tensor grad_output)
    {
        var call = (VarlenCall)ctx.get_data(CallKey);
        List<torch.Tensor>? saved = null;
        BackwardOutputs.ReleasePrevious();
        BackwardOutputs.ReleaseLater(grad_output);
        try
        {
            saved = ctx.get_saved_variables();
            int n = call.InputCount;
            var gradients = VarlenKernels.Backward(call, grad_output, saved.GetRange(0, n), saved[n], saved[n + 1], saved[n + 2], saved[n + 3]);
            return BackwardOutputs.HandOver([.. gradients, null!, null!, null!]);
        }
        catch (Exception e)
        {
            FlashAttentionTorch.RecordBackwardFailure(e);
            return Rejected(call.InputCount);
        }
        finally
        {
            saved?.ForEach(tensor => tensor?.Dispose());
        }
    }

    private static torch.Tensor Contiguous(torch.Tensor tensor) => tensor.is_contiguous() ? tensor : tensor.contiguous();

    /// <summary>Gradients libtorch refuses (shape [0] for inputs of rank 3 and 4), plus nulls for the offsets and the call.</summary>
    private static List<torch.Tensor> Rejected(int inputCount)
    {
        var result = new List<torch.Tensor>(inputCount + TrailingArguments);
        try
        {
            for (int i = 0; i < inputCount; i++)
                result.Add(torch.empty(0L));
        }
        catch (Exception)
        {
            // Cannot even allocate an empty tensor: undefined gradients are all that is left to return.
            result.Clear();
            for (int i = 0; i < inputCount; i++)
                result.Add(null!);
        }
        for (int i = 0; i < TrailingArguments; i++)
            result.Add(null!);
        return result;
    }
}
