using FlashAttn.Cli.Gpu;

namespace FlashAttn.Tests.Cli;

/// <summary>The decode grid and its buffer rotation.</summary>
public sealed class DecodeCaseTests
{
    [Fact]
    public void GridSkipsShapesPastTwoMillionTokens()
    {
        var cases = DecodeCase.Standard().ToList();
        Assert.Equal(45, cases.Count);
        Assert.Equal(15, cases.Count(c => c.Paged));
        Assert.Equal(15, cases.Count(c => c.Layout == DecodeLayout.HeadMajor));
        Assert.DoesNotContain(cases, c => c.Batch == 64 && c.CacheLength == 131072);
        Assert.Contains(cases, c => c.Batch == 16 && c.CacheLength == 131072);
        Assert.Equal(cases.Where(c => c.Layout == DecodeLayout.Contiguous).Select(c => (c.Batch, c.CacheLength)), cases.Where(c => c.Paged).Select(c => (c.Batch, c.CacheLength)));
        Assert.Equal(15, DecodeCase.Standard(layouts: false).Count());
    }

    [Fact]
    public void BytesFlopsAndPages()
    {
        var c = new DecodeCase(1, 32768);
        Assert.Equal(128L << 20, c.KvBytes); // 2 x 32768 x 8 x 128 x 2 bytes
        Assert.Equal(4.0 * 32768 * 32 * 128, c.Flops);
        Assert.Equal(128, c.BlocksPerSequence);
        Assert.Null(c.Feature);
        Assert.Equal("paged", (c with { Layout = DecodeLayout.Paged }).Feature);
        Assert.Equal("head-major", (c with { Layout = DecodeLayout.HeadMajor }).Feature);
    }

    [Fact]
    public void RotationCoversFourTimesL2WithAtLeastTwoSets()
    {
        const long l2 = 50L << 20;
        Assert.Equal(50, new DecodeCase(1, 1024).BufferSets(l2)); // 4 MiB per set
        Assert.Equal(2, new DecodeCase(1, 32768).BufferSets(l2)); // 128 MiB: 2 sets = 256 MiB > 200 MiB
        Assert.Equal(2, new DecodeCase(64, 32768).BufferSets(l2));
        foreach (var c in DecodeCase.Standard())
            Assert.True(c.BufferSets(l2) * c.KvBytes >= 4 * l2);
    }
}
