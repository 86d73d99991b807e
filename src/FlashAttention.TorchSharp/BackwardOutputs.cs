using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// Releases the managed wrappers of the gradients our autograd functions hand back to libtorch. libtorch takes its own
/// reference once backward returns, but the wrappers were created on the autograd engine's thread, outside any
/// DisposeScope, and would hold their device memory until the garbage collector finalised them: in a training loop
/// (measured on the H100: about 1 GiB per step for a 10-layer model) that ran the GPU out of memory within 30 steps.
/// Each thread's wrappers are disposed when that thread next enters a backward, by which point libtorch has long taken
/// the previous ones over; so at most one call's gradients per engine thread wait.
/// </summary>
internal static class BackwardOutputs
{
    [ThreadStatic]
    private static List<torch.Tensor>? _pending;

    /// <summary>Disposes the wrappers this thread handed over in its previous backward.</summary>
    public static void ReleasePrevious()
    {
        if (_pending is not { Count: > 0 } pending) return;
        foreach (var tensor in pending) tensor.Dispose();
        pending.Clear();
    }

    /// <summary>Remembers the wrapper of the incoming gradient, which TorchSharp creates on the engine thread for each call and
    /// leaves undisposed too (measured: one O-sized tensor per layer and step).</summary>
    public static void ReleaseLater(torch.Tensor? tensor)
    {
        if (tensor is null) return;
        _pending ??= [];
        _pending.Add(tensor);
    }

    /// <summary>Returns <paramref name="gradients"/> unchanged, remembering their wrappers for <see cref="ReleasePrevious"/>.</summary>
    public static List<torch.Tensor> HandOver(List<torch.Tensor> gradients)
    {
        _pending ??= [];
        foreach (var tensor in gradients)
            if (tensor is not null) _pending.Add(tensor);
        return gradients;
    }
}
