using FlashAttn.Cuda;

namespace FlashAttn.Tests.Cuda;

/// <summary>Forward tiling choice (no GPU needed): which windows take the narrow-window tiling and what it compiles.</summary>
public sealed class ForwardVariantTests
{
    [Theory]
    [InlineData(-1, -1, false)]    // no window
    [InlineData(-1, 0, false)]     // causal without a left bound: the key range grows with the row
    [InlineData(256, -1, false)]   // unbounded on the right
    [InlineData(256, 0, true)]
    [InlineData(256, 256, true)]
    [InlineData(1024, 0, true)]
    [InlineData(549, 550, true)]   // span 1100
    [InlineData(550, 550, false)]  // span 1101
    [InlineData(1024, 1024, false)]
    [InlineData(int.MaxValue, int.MaxValue, false)]
    public void NarrowWindowsAreThoseWithBothSidesBoundedAndASmallSpan(int left, int right, bool narrow)
    {
        Assert.Equal(1100, ForwardVariant.NarrowWindowSpan);   // the default; FLASHATTN_FWD_NARROW_SPAN is unset in the suite
        Assert.Equal(narrow, ForwardVariant.IsNarrowWindow(left, right));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void HeadDim64NarrowTilingHalvesTheQueryBlockAndKeepsWarpRows(bool bf16)
    {
        var wide = ForwardVariant.For(64, bf16);
        var narrow = ForwardVariant.For(64, bf16, narrowWindow: true);
        Assert.Equal((128, 4), (wide.BlockM, wide.Warps));
        Assert.Equal((64, 2), (narrow.BlockM, narrow.Warps));
        Assert.Equal(wide.BlockM / wide.Warps, narrow.BlockM / narrow.Warps);   // 32 query rows per warp in both
        Assert.NotEqual(wide.Name, narrow.Name);                               // distinct cubins in the cache
        Assert.Equal((64 + 2 * 64) * 64 * 2, narrow.SharedMemoryBytes);
        Assert.Equal(64, narrow.Threads);
    }

    [Theory]
    [InlineData(128)]
    [InlineData(192)]
    [InlineData(256)]
    public void OtherHeadDimsKeepTheirTilingForNarrowWindows(int headDim) =>
        Assert.Equal(ForwardVariant.For(headDim, true), ForwardVariant.For(headDim, true, narrowWindow: true));
}

/// <summary>The Hopper forward's coverage and variant (no GPU needed).</summary>
public sealed class HopperForwardVariantTests
{
    [Theory]
    [InlineData("sm_90a", 64, false, false, false, true)]
    [InlineData("sm_90a", 128, false, false, false, true)]
    [InlineData("sm_90a", 100, false, false, false, true)]   // padded to the 128 bucket
    [InlineData("sm_90a", 192, false, false, false, true)]
    [InlineData("sm_90a", 256, false, false, false, true)]
    [InlineData("sm_90a", 64, true, false, false, false)]    // dropout goes to the FlashAttention-2 kernel
    [InlineData("sm_90a", 64, false, true, false, true)]     // softcap
    [InlineData("sm_90a", 64, false, false, true, true)]     // ALiBi
    [InlineData("sm_90a", 256, false, true, true, true)]
    [InlineData("sm_80", 64, false, false, false, false)]
    [InlineData("sm_80", 64, false, true, false, false)]
    [InlineData("sm_89", 128, false, false, false, false)]
    public void CoversSm90WithoutDropout(string architecture, int headDim, bool dropout, bool softcap, bool alibi, bool covered)
    {
        Assert.Equal(covered, ForwardVariant.HopperCovers(architecture, headDim, dropout));
        ForwardVariant.HopperPinned.Value = true;
        Assert.Equal(covered, ForwardVariant.Choose(architecture, headDim, true, dropout, softcap, alibi, -1, -1).Hopper);
    }

    [Theory]
    [InlineData(64, false)]
    [InlineData(128, true)]
    [InlineData(256, true)]
    public void HopperVariantIsTwoWarpgroupsOfSixtyFourRowsInItsOwnSource(int headDim, bool bf16)
    {
        var hopper = ForwardVariant.ForHopper(headDim, bf16);
        Assert.True(hopper.Hopper);
        Assert.Equal((128, 8, 256), (hopper.BlockM, hopper.Warps, hopper.Threads));   // two warpgroups
        Assert.Equal(headDim == 64 ? 128 : 64, hopper.BlockN);
        int minBlocks = headDim <= 128 ? 2 : 1;   // 128 O accumulators a thread at head dim 256
        Assert.Equal(minBlocks, hopper.MinBlocksPerSm);
        Assert.Contains("-DFA_MIN_BLOCKS=" + minBlocks, hopper.CompilerDefines);
        Assert.Equal(("flash_fwd_sm90.cu", "flash_fwd_sm90_kernel"), (hopper.SourceFile, hopper.Kernel));
        Assert.StartsWith("flash_fwd_sm90_hdim" + headDim, hopper.Name);
        Assert.Equal((128 + 2 * hopper.BlockN) * headDim * 2 + 1024, hopper.SharedMemoryBytes);
        Assert.DoesNotContain(hopper.CompilerDefines, d => d.StartsWith("-DFA_WARPS", StringComparison.Ordinal));
        Assert.NotEqual(ForwardVariant.For(headDim, bf16).Name, hopper.Name);
        Assert.Contains("-DFA_SOFTCAP=0", hopper.CompilerDefines);
        Assert.Contains("-DFA_ALIBI=0", hopper.CompilerDefines);
    }

    [Theory]
    [InlineData(64, true)]
    [InlineData(128, false)]
    [InlineData(256, true)]
    public void NarrowWindowsTakeOneWarpgroupAtHeadDim64(int headDim, bool bf16)
    {
        ForwardVariant.HopperPinned.Value = true;
        var narrow = ForwardVariant.Choose("sm_90a", headDim, bf16, false, false, false, windowLeft: 256, windowRight: 0);
        var wide = ForwardVariant.Choose("sm_90a", headDim, bf16, false, false, false, windowLeft: 4096, windowRight: 0);
        Assert.True(narrow.Hopper && wide.Hopper);
        Assert.Equal(ForwardVariant.ForHopper(headDim, bf16), wide);
        if (headDim > 64)
        {
            Assert.Equal(wide, narrow);   // measured slower at 128 (spills at four CTAs per SM): the 128-row tiling
            return;
        }
        Assert.Equal((64, 4, 128, 64, 4), (narrow.BlockM, narrow.Warps, narrow.Threads, narrow.BlockN, narrow.MinBlocksPerSm));
        Assert.Contains("-DFA_WARPGROUPS=1", narrow.CompilerDefines);
        Assert.Contains("-DFA_WARPGROUPS=2", wide.CompilerDefines);
        Assert.Contains("_m64_", narrow.Name, StringComparison.Ordinal);
        Assert.NotEqual(wide.Name, narrow.Name);
    }

    [Theory]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(true, true)]
    public void ScoreModifiersAreCompiledInAndNamed(bool softcap, bool alibi)
    {
        var hopper = ForwardVariant.ForHopper(128, bfloat16: true, softcap, alibi);
        Assert.Contains("-DFA_SOFTCAP=" + (softcap ? 1 : 0), hopper.CompilerDefines);
        Assert.Contains("-DFA_ALIBI=" + (alibi ? 1 : 0), hopper.CompilerDefines);
        Assert.Equal(softcap, hopper.Name.Contains("_softcap", StringComparison.Ordinal));
        Assert.Equal(alibi, hopper.Name.Contains("_alibi", StringComparison.Ordinal));
        ForwardVariant.HopperPinned.Value = true;
        Assert.Equal(hopper, ForwardVariant.Choose("sm_90a", 128, true, false, softcap, alibi, -1, -1));
    }
}
