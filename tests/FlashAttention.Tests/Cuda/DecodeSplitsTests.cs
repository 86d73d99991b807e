using FlashAttn.Cuda;

namespace FlashAttn.Tests.Cuda;

/// <summary>The split heuristic of the decode kernel (pure host logic, no GPU): fill the SMs' two resident slots at small
/// batch, leave large batches unsplit, honour a requested count, never more splits than key blocks.</summary>
public sealed class DecodeSplitsTests
{
    private const int H100Sms = 132;

    [Theory]
    [InlineData(8, 131072)]     // batch 1, 8 kv heads: 264 slots want ~32 splits
    [InlineData(8, 8192)]
    [InlineData(64, 1024)]      // batch 8: 16 key blocks, 4 splits fill the slots
    public void SmallBatchesAreSplitUntilTheSlotsAreNearlyFull(int tiles, int capacity)
    {
        int splits = DecodeSplits.Choose(0, tiles, capacity, H100Sms);
        int slots = 2 * H100Sms;
        long blocks = (long)tiles * splits;
        Assert.True(blocks >= 0.9 * slots && blocks <= slots, $"{splits} splits give {blocks} blocks for {slots} slots");
    }

    [Fact]
    public void LargeBatchesAreNotSplit() => Assert.Equal(1, DecodeSplits.Choose(0, 64 * 8, 32768, H100Sms));

    [Fact]
    public void ShortCachesNeverGetMoreSplitsThanKeyBlocks()
    {
        Assert.Equal(2, DecodeSplits.Choose(0, 8, 100, H100Sms));     // 2 blocks of 64 keys
        Assert.Equal(1, DecodeSplits.Choose(0, 8, 0, H100Sms));
        Assert.Equal(2, DecodeSplits.Choose(7, 8, 128, H100Sms));     // a request is capped the same way
    }

    [Fact]
    public void RequestedCountsAreHonoured() => Assert.Equal(7, DecodeSplits.Choose(7, 8, 131072, H100Sms));
}
