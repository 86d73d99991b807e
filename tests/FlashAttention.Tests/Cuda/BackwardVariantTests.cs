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
