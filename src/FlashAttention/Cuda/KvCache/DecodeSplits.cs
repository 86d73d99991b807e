namespace FlashAttn.Cuda;

/// <summary>
/// How many splits of the key dimension a decode call uses. Without splits a call has batch x heads_kv x row-tiles thread
/// blocks, far fewer than the SMs' resident slots at small batch; with s splits it has s times as many, and the last wave
/// may be partly empty. The choice is the smallest s whose wave efficiency (blocks / slots of the waves they need) is
/// within 5% of the best (measured on the H100: 15% left an eighth of the slots idle at batch 1). Splits may be as short as
/// one 64-key block: at batch 1 with a 1k cache, 32 splits ran in 13.9 us against 19.2 us for 4 (bench/NOTES.md).
/// </summary>
internal static class DecodeSplits
{
    public const int MinBlocksPerSplit = 1;
    public const int ResidentPerSm = 2;

    public static int Choose(int requested, int tiles, int capacity, int multiprocessors)
    {
        int keyBlocks = Math.Max(1, (capacity + DecodeVariant.BlockN - 1) / DecodeVariant.BlockN);
        if (requested > 0) return Math.Min(requested, keyBlocks);
        int slots = Math.Max(1, multiprocessors * ResidentPerSm);
        int most = Math.Clamp(keyBlocks / MinBlocksPerSplit, 1, Validation.KvCacheValidator.MaxSplits);
        if (tiles >= 4 * slots) return 1;
        double best = 0;
        var efficiency = new double[most + 1];
        for (int s = 1; s <= most; s++)
        {
            long blocks = (long)tiles * s;
            long waves = (blocks + slots - 1) / slots;
            // Fewer blocks than slots leave SMs idle: count that as lost too.
            efficiency[s] = (double)blocks / (waves * slots);
            best = Math.Max(best, efficiency[s]);
        }
        for (int s = 1; s <= most; s++)
            if (efficiency[s] >= 0.95 * best) return s;
        return 1;
    }
}
