using FlashAttn.Cuda;

namespace FlashAttn.Tests.Cuda;

/// <summary>Backward tiling choice (no GPU needed): narrow windows take 64-key blocks at head dim 64 only.</summary>
public sealed class BackwardVariantTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void HeadDim64NarrowWindowsTake64KeyBlocksOfFourWarps(bool deterministic)
    {
        var wide = BackwardVariant.For(64, true, deterministic);
        var narrow = BackwardVariant.For(64, true, deterministic, narrowWindow: true);
        Assert.Equal((128, 64, 256), (wide.BlockN, wide.BlockM, wide.Threads));
        Assert.Equal((64, 64, 128), (narrow.BlockN, narrow.BlockM, narrow.Threads));
        Assert.NotEqual(wide.Name, narrow.Name);   // distinct cubins in the cache
        Assert.True(narrow.SharedMemoryBytes < wide.SharedMemoryBytes);
    }

    [Theory]
    [InlineData(128)]
    [InlineData(192)]
    [InlineData(256)]
    public void OtherHeadDimsKeepTheirTilingForNarrowWindows(int headDim) =>
        Assert.Equal(BackwardVariant.For(headDim, false, false), BackwardVariant.For(headDim, false, false, narrowWindow: true));
}

/// <summary>The Hopper backward's coverage and variant (no GPU needed).</summary>
public sealed class HopperBackwardVariantTests
{
    [Theory]
    [InlineData("sm_90a", 64, false, false, true)]
    [InlineData("sm_90a", 128, false, false, true)]
    [InlineData("sm_90a", 100, false, false, true)]    // padded to the 128 bucket
    [InlineData("sm_90a", 128, false, true, true)]     // narrow windows at 128 keep the Hopper kernel
    [InlineData("sm_90a", 64, false, true, false)]     // narrow windows at 64 keep flash_bwd.cu's 64-key blocks
    [InlineData("sm_90a", 64, true, false, false)]     // dropout
    [InlineData("sm_90a", 192, false, false, false)]
    [InlineData("sm_90a", 256, false, false, false)]
    [InlineData("sm_80", 64, false, false, false)]
    public void CoversSm90UpToHeadDim128WithoutDropout(string architecture, int headDim, bool dropout, bool narrowWindow, bool covered) =>
        Assert.Equal(covered, BackwardVariant.HopperCovers(architecture, headDim, dropout, narrowWindow));

    [Theory]
    [InlineData(64, false, false, false)]
    [InlineData(128, true, true, false)]
    [InlineData(128, false, false, true)]
    public void HopperVariantIsTwoWarpgroupsOf64KeysInItsOwnSource(int headDim, bool bf16, bool deterministic, bool softcap)
    {
        BackwardVariant.HopperPinned.Value = true;
        var hopper = BackwardVariant.Choose("sm_90a", headDim, bf16, deterministic, false, softcap, false, false);
        Assert.True(hopper.Hopper);
        Assert.Equal((128, 64, 256), (hopper.BlockN, hopper.BlockM, hopper.Threads));
        Assert.Equal("flash_bwd_sm90.cu", hopper.SourceFile);
        Assert.StartsWith("flash_bwd_sm90_hdim" + headDim, hopper.Name, StringComparison.Ordinal);
        Assert.Equal(BackwardVariant.For(headDim, bf16, deterministic, softcap: softcap).SharedMemoryBytes + 1024, hopper.SharedMemoryBytes);
        Assert.NotEqual(BackwardVariant.For(headDim, bf16, deterministic, softcap: softcap).Name, hopper.Name);
        Assert.Contains("-DFA_DETERMINISTIC=" + (deterministic ? 1 : 0), hopper.CompilerDefines);
        Assert.Contains("-DFA_SOFTCAP=" + (softcap ? 1 : 0), hopper.CompilerDefines);
    }

    [Fact]
    public void UnpinnedFa2ChoiceIsTheFlashAttention2Variant()
    {
        BackwardVariant.HopperPinned.Value = false;
        Assert.Equal(BackwardVariant.For(64, true, false), BackwardVariant.Choose("sm_90a", 64, true, false, false, false, false, false));
    }
}
