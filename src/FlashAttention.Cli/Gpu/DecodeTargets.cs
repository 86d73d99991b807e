namespace FlashAttn.Cli.Gpu;

/// <summary>
/// Issue 6's decoding targets, per shape: at least <see cref="MinSpeedup"/> x PyTorch's speed everywhere; at least
/// <see cref="SpeedupWherePeerSlow"/> x where PyTorch reaches under <see cref="CopyShare"/> of the copy bandwidth (there is
/// headroom it leaves); and at least <see cref="CopyShare"/> of the copy bandwidth wherever one call reads
/// <see cref="LargeReadBytes"/> or more of cache (launch and merge costs no longer excuse a shortfall there).
/// </summary>
internal static class DecodeTargets
{
    public const double MinSpeedup = 0.98, SpeedupWherePeerSlow = 1.3, CopyShare = 0.8;

    /// <summary>128 MiB of K and V per call.</summary>
    public const long LargeReadBytes = 128L << 20;

    /// <summary>One applicable target: its short name, the bound, the measured value and whether it holds.</summary>
    /// <param name="Name">"torch" (speed over PyTorch's) or "copy" (share of the copy bandwidth).</param>
    public sealed record Target(string Name, double Required, double Actual)
    {
        public bool Pass => Actual >= Required;
    }

    /// <summary>The targets that apply to one shape, speed first. Speed targets need the peer; the bandwidth target needs the copy figure.</summary>
    /// <param name="kvBytes">K and V bytes one call reads.</param>
    /// <param name="oursMs">Our milliseconds per call.</param>
    /// <param name="copyTbps">Our run's copy bandwidth (read + write), TB/s; 0 or NaN when unknown.</param>
    /// <param name="peerMs">PyTorch's milliseconds per call; null without a peer row.</param>
    /// <param name="peerCopyShare">PyTorch's K+V bandwidth over the copy bandwidth of its run; null when unknown.</param>
    public static IReadOnlyList<Target> Judge(long kvBytes, double oursMs, double copyTbps, double? peerMs, double? peerCopyShare)
    {
        var targets = new List<Target>();
        if (peerMs is { } torch && torch > 0 && oursMs > 0)
        {
            bool headroom = peerCopyShare is { } share && share < CopyShare;
            targets.Add(new Target("torch", headroom ? SpeedupWherePeerSlow : MinSpeedup, torch / oursMs));
        }
        if (kvBytes >= LargeReadBytes && copyTbps > 0 && oursMs > 0)
            targets.Add(new Target("copy", CopyShare, DecodeRows.Tbps(kvBytes, oursMs) / copyTbps));
        return targets;
    }
}
