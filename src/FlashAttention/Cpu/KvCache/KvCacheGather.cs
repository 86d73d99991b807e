using FlashAttn.Validation;

namespace FlashAttn.Cpu;

/// <summary>
/// Each sequence's keys and values (cache positions 0 .. len_b - 1) as attention operands. A contiguous cache read at row b
/// is used in place (the operands' batch stride walks it); otherwise (cache_batch_idx or pages) the rows are copied into
/// one concatenated buffer, sequence b starting at row <see cref="KStart"/>[b], like varlen's key layout.
/// </summary>
internal sealed unsafe class KvCacheGather<T> : IDisposable where T : unmanaged
{
    private readonly ElementBuffer<T>? _keys, _values;

    private KvCacheGather(Operand<T> k, Operand<T> v, int[] kStart, ElementBuffer<T>? keys, ElementBuffer<T>? values)
    {
        K = k;
        V = v;
        KStart = kStart;
        _keys = keys;
        _values = values;
    }

    public Operand<T> K { get; }
    public Operand<T> V { get; }

    /// <summary>First row of each sequence in K and V.</summary>
    public int[] KStart { get; }

    public static KvCacheGather<T> Create(KvCacheShape shape, CacheSlots slots, int[] lengths, Operand<T> kCache, Operand<T> vCache,
        CancellationToken ct)
    {
        if (slots.IsIdentity) return new KvCacheGather<T>(kCache, vCache, new int[shape.Batch], null, null);

        var start = new int[shape.Batch];
        long total = 0;
        for (int b = 0; b < shape.Batch; b++)
        {
            start[b] = checked((int)total);
            total += lengths[b];
        }
        int d = shape.HeadDim, heads = shape.HeadsKv;
        long count = total * heads * d;
        var keys = new ElementBuffer<T>(count);
        var values = new ElementBuffer<T>(count);
        // Dense (total, heads_kv, d) with batch stride 0: rows are absolute, as in the varlen layout.
        var k = new Operand<T>(keys.Pointer, 0, (nint)heads * d, d);
        var v = new Operand<T>(values.Pointer, 0, (nint)heads * d, d);
        try
        {
            Parallel.For(0, shape.Batch, new ParallelOptions { CancellationToken = ct }, b =>
            {
                for (int j = 0; j < lengths[b]; j++)
                {
                    var (index0, index1) = slots.Locate(b, j);
                    for (int h = 0; h < heads; h++)
                    {
                        new ReadOnlySpan<T>(kCache.At(index0, index1, h), d).CopyTo(new Span<T>(k.At(0, start[b] + j, h), d));
                        new ReadOnlySpan<T>(vCache.At(index0, index1, h), d).CopyTo(new Span<T>(v.At(0, start[b] + j, h), d));
                    }
                }
            });
        }
        catch
        {
            keys.Dispose();
            values.Dispose();
            throw;
        }
        return new KvCacheGather<T>(k, v, start, keys, values);
    }

    public void Dispose()
    {
        _keys?.Dispose();
        _values?.Dispose();
    }
}
