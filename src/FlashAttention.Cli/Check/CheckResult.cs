namespace FlashAttn.Cli.Check;

/// <summary>The outcome of one case in one direction (forward or backward) on one execution path.</summary>
internal sealed record CheckResult(CheckCase Case, string Direction, string Path, IReadOnlyList<TensorCheck> Tensors, string? Error = null)
{
    public bool Passed => Error is null && Tensors.All(t => t.Passed);

    /// <summary>The tensor closest to (or furthest past) its tolerance.</summary>
    public TensorCheck? Worst => Tensors.Count == 0 ? null : Tensors.MaxBy(t => t.Ratio);
}
