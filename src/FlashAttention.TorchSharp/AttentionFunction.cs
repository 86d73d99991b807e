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

    /// <summary>
    /// Runs inside libtorch's autograd engine, called from native code: an exception must not leave this method (it
    /// would cross native frames and end the process). A failure is recorded (<see cref="FlashAttentionTorch.LastBackwardException"/>)
    /// and answered with gradients of a wrong shape, which makes libtorch abort the backward pass with an error, so
    /// <c>loss.backward()</c> throws instead of training on garbage.
    /// </summary>
    public override List<torch.Tensor> backward(torch.autograd.AutogradContext ctx, torch.Tensor grad_output)
    {
        var call = (AttentionCall)ctx.get_data(CallKey);
        List<torch.Tensor>? saved = null;
        BackwardOutputs.ReleasePrevious();
        BackwardOutputs.ReleaseLater(grad_output);
        try
        {
            saved = ctx.get_saved_variables();
            int n = call.InputCount;
            var gradients = AttentionKernels.Backward(call, grad_output, saved.GetRange(0, n), saved[n], saved[n + 1]);
            return BackwardOutputs.HandOver([.. gradients, null!]);
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

    /// <summary>Gradients libtorch refuses (shape [0] for inputs of rank 4 and 5), plus null for the call argument.</summary>
    private static List<torch.Tensor> Rejected(int inputCount)
    {
        var result = new List<torch.Tensor>(inputCount + 1);
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
        result.Add(null!);
        return result;
    }
}
