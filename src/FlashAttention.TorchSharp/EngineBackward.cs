using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// The part of our autograd functions' backward that runs inside libtorch's autograd engine, shared by
/// <see cref="AttentionFunction"/> and <see cref="VarlenFunction"/>:
/// <list type="bullet">
/// <item>It is called from native code, so an exception must not leave it: a failure is recorded
/// (<see cref="FlashAttentionTorch.LastBackwardException"/>) and answered with gradients of a wrong shape, which makes
/// libtorch abort the backward pass, so <c>loss.backward()</c> throws instead of training on garbage.</item>
/// <item>The managed wrappers of the tensors it hands to libtorch (and of the incoming gradient) are created on the engine's
/// thread, outside any DisposeScope, and would hold their device memory until the garbage collector finalised them: in a
/// training loop (measured on the H100: about 1 GiB per step for a 10-layer model) that ran the GPU out of memory within
/// 30 steps. Each thread's wrappers are disposed when that thread next enters a backward, by which point libtorch has long
/// taken the previous ones over; so at most one call's tensors per engine thread wait.</item>
/// </list>
/// </summary>
internal static class EngineBackward
{
    [ThreadStatic]
    private static List<torch.Tensor>? _pending;

    /// <summary>
    /// Runs <paramref name="gradients"/> over the saved variables and returns its <paramref name="inputCount"/> gradients
    /// followed by <paramref name="trailingNulls"/> nulls (for the non-tensor and non-differentiable arguments).
    /// </summary>
    public static List<torch.Tensor> Run(torch.autograd.AutogradContext ctx, torch.Tensor gradOutput, int inputCount, int trailingNulls,
        Func<List<torch.Tensor>, IEnumerable<torch.Tensor>> gradients)
    {
        ReleasePrevious();
        Remember(gradOutput);
        List<torch.Tensor>? saved = null;
        try
        {
            saved = ctx.get_saved_variables();
            var result = new List<torch.Tensor>(gradients(saved));
            foreach (var tensor in result) Remember(tensor);
            for (int i = 0; i < trailingNulls; i++) result.Add(null!);
            return result;
        }
        catch (Exception e)
        {
            FlashAttentionTorch.RecordBackwardFailure(e);
            return Rejected(inputCount, trailingNulls);
        }
        finally
        {
            saved?.ForEach(tensor => tensor?.Dispose());
        }
    }

    private static void ReleasePrevious()
    {
        if (_pending is not { Count: > 0 } pending) return;
        foreach (var tensor in pending) tensor.Dispose();
        pending.Clear();
    }

    private static void Remember(torch.Tensor? tensor)
    {
        if (tensor is null) return;
        (_pending ??= []).Add(tensor);
    }

    /// <summary>Gradients libtorch refuses (shape [0] for inputs of rank 3 to 5), plus the trailing nulls.</summary>
    private static List<torch.Tensor> Rejected(int inputCount, int trailingNulls)
    {
        var result = new List<torch.Tensor>(inputCount + trailingNulls);
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
        for (int i = 0; i < trailingNulls; i++)
            result.Add(null!);
        return result;
    }
}
