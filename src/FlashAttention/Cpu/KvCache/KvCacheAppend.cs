using FlashAttn.Validation;

namespace FlashAttn.Cpu;

/// <summary>
/// The append step of <c>flash_attn_with_kvcache</c>: row i of k_new / v_new of sequence b goes to cache position
/// cache_seqlens[b] + i, keys rotated at that position first (the rotated key is what the cache keeps).
/// </summary>
internal static unsafe class KvCacheAppend
{
    public static void Run<T>(KvCacheShape shape, CacheSlots slots, int[] cacheSeqlens, RotaryTable<T> rotary,
        Operand<T> kNew, Operand<T> vNew, Operand<T> kCache, Operand<T> vCache) where T : unmanaged
    {
        int d = shape.HeadDim;
        for (int b = 0; b < shape.Batch; b++)
            for (int i = 0; i < shape.SeqlenNew; i++)
            {
                int position = cacheSeqlens[b] + i;
                var (index0, index1) = slots.Locate(b, position);
                for (int h = 0; h < shape.HeadsKv; h++)
                {
                    rotary.Apply(kNew.At(b, i, h), kCache.At(index0, index1, h), d, position);
                    new ReadOnlySpan<T>(vNew.At(b, i, h), d).CopyTo(new Span<T>(vCache.At(index0, index1, h), d));
                }
            }
    }
}
