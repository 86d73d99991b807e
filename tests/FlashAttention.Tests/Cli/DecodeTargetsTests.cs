using FlashAttn.Cli.Gpu;

namespace FlashAttn.Tests.Cli;

/// <summary>Issue 6's decoding targets as the bench judges them: 0.98x PyTorch everywhere, 1.3x where PyTorch leaves a fifth of the
/// copy bandwidth unused, 80% of the copy bandwidth from 128 MiB of cache per call.</summary>
public sealed class DecodeTargetsTests
{
    private const long Small = 4L << 20, Large = 128L << 20;

    [Fact]
    public void NearThePeerWhereItIsFast()
    {
        var target = Assert.Single(DecodeTargets.Judge(Small, oursMs: 0.010, copyTbps: 3.0, peerMs: 0.0099, peerCopyShare: 0.85));
        Assert.Equal("torch", target.Name);
        Assert.Equal(DecodeTargets.MinSpeedup, target.Required);
        Assert.Equal(0.99, target.Actual, 6);
        Assert.True(target.Pass);
        Assert.False(Assert.Single(DecodeTargets.Judge(Small, 0.010, 3.0, peerMs: 0.0097, peerCopyShare: 0.85)).Pass);
    }

    [Fact]
    public void FasterWhereThePeerLeavesBandwidthUnused()
    {
        var target = Assert.Single(DecodeTargets.Judge(Small, oursMs: 0.010, copyTbps: 3.0, peerMs: 0.0125, peerCopyShare: 0.79));
        Assert.Equal(DecodeTargets.SpeedupWherePeerSlow, target.Required);
        Assert.False(target.Pass); // 1.25x
        Assert.True(Assert.Single(DecodeTargets.Judge(Small, 0.010, 3.0, peerMs: 0.0131, peerCopyShare: 0.79)).Pass);
        // Without the peer's bandwidth the stricter bound cannot be claimed to apply.
        Assert.Equal(DecodeTargets.MinSpeedup, Assert.Single(DecodeTargets.Judge(Small, 0.010, 3.0, 0.0131, null)).Required);
    }

    [Fact]
    public void CopyShareFrom128MiBPerCall()
    {
        Assert.DoesNotContain(DecodeTargets.Judge(Large - 1, 0.05, 3.0, null, null), t => t.Name == "copy");
        // 128 MiB in 0.05 ms is 2.684 TB/s: 89% of 3 TB/s.
        var copy = Assert.Single(DecodeTargets.Judge(Large, oursMs: 0.05, copyTbps: 3.0, peerMs: null, peerCopyShare: null));
        Assert.Equal("copy", copy.Name);
        Assert.Equal(Large / 0.05e-3 / 1e12 / 3.0, copy.Actual, 9);
        Assert.True(copy.Pass);
        Assert.False(Assert.Single(DecodeTargets.Judge(Large, oursMs: 0.06, copyTbps: 3.0, null, null)).Pass); // 75%
        Assert.Empty(DecodeTargets.Judge(Large, 0.05, copyTbps: double.NaN, null, null));
    }

    [Fact]
    public void BothTargetsSpeedFirst()
    {
        var targets = DecodeTargets.Judge(Large, oursMs: 0.05, copyTbps: 3.0, peerMs: 0.06, peerCopyShare: 0.75);
        Assert.Equal(["torch", "copy"], targets.Select(t => t.Name));
        Assert.Equal([DecodeTargets.SpeedupWherePeerSlow, DecodeTargets.CopyShare], targets.Select(t => t.Required));
        Assert.Equal([false, true], targets.Select(t => t.Pass));
    }
}
