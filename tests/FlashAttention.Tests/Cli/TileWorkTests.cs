using FlashAttn.Cli.Gpu;

namespace FlashAttn.Tests.Cli;

/// <summary>The bench's count of computed tiles (issue 5's measure for windows) against a brute-force count: the tiles of the
/// kernels' grid that hold at least one visible pair, since each block's visited range is exactly the tiles its rows' windows
/// touch.</summary>
public sealed class TileWorkTests
{
    [Theory]
    [InlineData(300, 300, -1, -1)]
    [InlineData(300, 300, -1, 0)]      // causal
    [InlineData(300, 300, 40, 0)]      // causal with a left window
    [InlineData(300, 300, 50, 20)]
    [InlineData(250, 300, 7, 3)]       // seqlen_q < seqlen_k: bottom-right aligned
    [InlineData(300, 120, -1, 0)]      // seqlen_q > seqlen_k: leading rows see nothing
    [InlineData(200, 200, 0, 0)]       // the diagonal alone
    public void ComputedTilesAreTheTilesWithAVisiblePair(int seqlenQ, int seqlenK, int left, int right)
    {
        foreach (var (blockM, blockN) in new[] { (128, 64), (64, 64), (128, 128), (64, 128) })
        {
            Assert.Equal(BruteForce(seqlenQ, seqlenK, blockM, blockN, left, right), TileWork.ForwardPairs(seqlenQ, seqlenK, blockM, blockN, left, right));
            // The backward walks key blocks of blockN and query blocks of blockM: the same grid, visited by columns.
            Assert.Equal(BruteForce(seqlenQ, seqlenK, blockM, blockN, left, right), TileWork.BackwardPairs(seqlenQ, seqlenK, blockN, blockM, left, right));
        }
    }

    [Fact]
    public void NarrowWindowBlocksComputeNineKeyBlocksAtWindow256()
    {
        // A (256, 256) window on 64 x 64 tiles: an interior query block touches keys [row0 - 256, row0 + 63 + 256], 9 blocks.
        long pairs = TileWork.ForwardPairs(16384, 16384, 64, 64, 256, 256);
        long interior = 9L * 64 * 64 * (16384 / 64);
        Assert.InRange(pairs, interior - 8L * 64 * 64 * 4, interior);   // the first and last few blocks are clipped
    }

    private static long BruteForce(int seqlenQ, int seqlenK, int blockM, int blockN, int left, int right)
    {
        int offset = seqlenK - seqlenQ;
        long pairs = 0;
        for (int row0 = 0; row0 < seqlenQ; row0 += blockM)
            for (int col0 = 0; col0 < seqlenK; col0 += blockN)
            {
                bool visible = false;
                for (int i = row0; i < Math.Min(row0 + blockM, seqlenQ) && !visible; i++)
                    for (int j = col0; j < Math.Min(col0 + blockN, seqlenK) && !visible; j++)
                        visible = (left < 0 || j >= i + offset - left) && (right < 0 || j <= i + offset + right);
                if (visible) pairs += (long)blockM * blockN;
            }
        return pairs;
    }
}

/// <summary>Feature rows' work on tiles (FeatureCase.TileFlops), with each architecture's kernel tiling.</summary>
public sealed class FeatureCaseTileFlopsTests
{
    [Theory]
    [InlineData("sm_80")]
    [InlineData("sm_90a")]
    public void FullAttentionOnWholeTilesIsItsVisibleWork(string architecture)
    {
        var row = new FeatureCase("none", "bf16", 4, 4096, 32, 64, false, "fwdbwd");
        Assert.Equal(row.Flops, row.TileFlops(architecture)!.Value, 6);
    }

    [Theory]
    [InlineData("sm_80", 64, 1.12)]    // FA2's narrow-window tiling: 64-row blocks compute 576 keys a row for 513 visible
    [InlineData("sm_90a", 64, 1.12)]   // the Hopper kernel's 64-row narrow-window tiling at head dim 64: the same 576
    [InlineData("sm_90a", 128, 1.25)]  // its 128 x 64 tiles at head dim 128: 640 keys a row
    public void SmallWindowsComputeMoreThanTheyShow(string architecture, int headDim, double ratio)
    {
        var row = new FeatureCase("window", "bf16", 1, 16384, 32, headDim, false, "fwd", Window: (256, 256));
        Assert.Equal(ratio, row.TileFlops(architecture)!.Value / row.Flops, 2);
    }

    [Fact]
    public void VarlenRowsHaveNoTileCount() =>
        Assert.Null(new FeatureCase("varlen", "bf16", 8, 3584, 32, 64, false, "fwd", Lengths: [3584, 512]).TileFlops("sm_90a"));
}
