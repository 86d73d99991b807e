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
