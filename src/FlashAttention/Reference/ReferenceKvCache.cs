using System.Numerics;

namespace FlashAttn.Reference;

/// <summary>
/// One <c>flash_attn_with_kvcache</c> problem as the reference reads it: dense flat arrays in row-major order. The cache is
/// (CacheBlocks, CacheRows, heads_kv, d): batch_cache x seqlen_cache when contiguous, num_blocks x page_size when paged.
/// </summary>
internal sealed class ReferenceKvCacheProblem<TReal>
{
    public required int Batch { get; init; }
    public required int SeqlenQ { get; init; }
    public required int HeadsQ { get; init; }
    public required int HeadsKv { get; init; }
    public required int HeadDim { get; init; }

    /// <summary>(batch, seqlen_q, heads_q, d).</summary>
    public required TReal[] Q { get; init; }

    /// <summary>(CacheBlocks, CacheRows, heads_kv, d); not modified (the reference returns the appended copy).</summary>
    public required TReal[] KCache { get; init; }
    public required TReal[] VCache { get; init; }
    public required int CacheBlocks { get; init; }
    public required int CacheRows { get; init; }

    /// <summary>(batch, SeqlenNew, heads_kv, d), or null for no append.</summary>
    public TReal[]? KNew { get; init; }
    public TReal[]? VNew { get; init; }
    public int SeqlenNew { get; init; }

    /// <summary>Keys already cached per sequence; null attends over the whole capacity.</summary>
    public int[]? CacheSeqlens { get; init; }

    /// <summary>Cache row of each sequence (contiguous cache); null for row b.</summary>
    public int[]? CacheBatchIndex { get; init; }

    /// <summary>(batch, MaxBlocks) page indices; null for a contiguous cache.</summary>
    public int[]? BlockTable { get; init; }
    public int MaxBlocks { get; init; }

    /// <summary>(RotaryPositions, rotary_dim / 2) cosines and sines; null for no rotary.</summary>
    public TReal[]? RotaryCos { get; init; }
    public TReal[]? RotarySin { get; init; }
    public int RotaryPositions { get; init; }
    public bool RotaryInterleaved { get; init; } = true;

    public int RotaryPairs => RotaryCos is null ? 0 : RotaryCos.Length / RotaryPositions;
    public int Capacity => BlockTable is null ? CacheRows : MaxBlocks * CacheRows;
}

/// <summary>Results of the reference: O (batch, seqlen_q, heads_q, d), LSE (batch, heads_q, seqlen_q), the caches after the append
/// (shaped like the inputs) and which cache rows (index0 * CacheRows + index1) the append wrote.</summary>
internal sealed class ReferenceKvCacheResult<TReal>
{
    public required TReal[] Output { get; init; }
    public required TReal[] LogSumExp { get; init; }
    public required TReal[] KCache { get; init; }
    public required TReal[] VCache { get; init; }
    public required bool[] AppendedRows { get; init; }
}

/// <summary>
/// The oracle of <c>flash_attn_with_kvcache</c>, written apart from the CPU path: its own cache addressing and rotary
/// embedding, then <see cref="ReferenceAttention"/> per sequence over that sequence's keys. With double it is the float64
/// reference; with float and <c>roundStored</c> rounding to the element type it is the naive baseline of the tolerance rule.
/// </summary>
internal static class ReferenceKvCache
{
    /// <param name="problem">The inputs.</param>
    /// <param name="settings">Attention settings for the whole batch (ALiBi slopes indexed by sequence).</param>
    /// <param name="roundStored">Applied to rotated q and k values, the ones the algorithm stores in the element type;
    /// null keeps them exact.</param>
    public static ReferenceKvCacheResult<TReal> Forward<TReal>(ReferenceKvCacheProblem<TReal> problem, ReferenceSettings settings,
        Func<TReal, TReal>? roundStored = null) where TReal : IFloatingPointIeee754<TReal>
    {
        var p = problem;
        int d = p.HeadDim, hkv = p.HeadsKv, hq = p.HeadsQ, sq = p.SeqlenQ;
        // The naive baseline also rounds P before P·V, as the kernels do (null for the exact reference).
        Func<TReal, TReal>? roundOperand = roundStored;
        roundStored ??= x => x;
        var kCache = (TReal[])p.KCache.Clone();
        var vCache = (TReal[])p.VCache.Clone();
        var appended = new bool[p.CacheBlocks * p.CacheRows];

        // Element index of (sequence b, key position j, kv head, dim 0) in the cache.
        int CacheRow(int b, int j) => p.BlockTable is { } table
            ? table[b * p.MaxBlocks + j / p.CacheRows] * p.CacheRows + j % p.CacheRows
            : (p.CacheBatchIndex?[b] ?? b) * p.CacheRows + j;
        int CacheIndex(int b, int j, int head) => (CacheRow(b, j) * hkv + head) * d;
        int Cached(int b) => p.CacheSeqlens?[b] ?? 0;

        if (p.KNew is { } kNew && p.VNew is { } vNew)
            for (int b = 0; b < p.Batch; b++)
                for (int i = 0; i < p.SeqlenNew; i++)
                {
                    int position = Cached(b) + i;
                    appended[CacheRow(b, position)] = true;
                    for (int h = 0; h < hkv; h++)
                    {
                        int source = ((b * p.SeqlenNew + i) * hkv + h) * d, target = CacheIndex(b, position, h);
                        var key = Rotated(p, kNew.AsSpan(source, d), position, roundStored);
                        key.CopyTo(kCache, target);
                        Array.Copy(vNew, source, vCache, target, d);
                    }
                }

        var output = new TReal[p.Batch * sq * hq * d];
        var lse = new TReal[p.Batch * hq * sq];
        bool queryPerRow = settings.WindowLeft >= 0 || settings.WindowRight >= 0; // causal is WindowRight = 0 here
        for (int b = 0; b < p.Batch; b++)
        {
            int length = p.CacheSeqlens is null ? p.Capacity : Cached(b) + p.SeqlenNew;
            var q = new TReal[sq * hq * d];
            for (int i = 0; i < sq; i++)
                for (int h = 0; h < hq; h++)
                {
                    int at = (i * hq + h) * d;
                    var row = p.Q.AsSpan((b * sq * hq * d) + at, d);
                    if (p.RotaryCos is null) row.CopyTo(q.AsSpan(at, d));
                    else Rotated(p, row, Cached(b) + (queryPerRow ? i : 0), roundStored).CopyTo(q, at);
                }
            var k = new TReal[length * hkv * d];
            var v = new TReal[length * hkv * d];
            for (int j = 0; j < length; j++)
                for (int h = 0; h < hkv; h++)
                {
                    Array.Copy(kCache, CacheIndex(b, j, h), k, (j * hkv + h) * d, d);
                    Array.Copy(vCache, CacheIndex(b, j, h), v, (j * hkv + h) * d, d);
                }
            var one = ReferenceAttention.Forward(new ReferenceShape(1, sq, length, hq, hkv, d), settings with { BatchOffset = b }, q, k, v, roundOperand);
            one.Output.CopyTo(output, b * sq * hq * d);
            one.LogSumExp.CopyTo(lse, b * hq * sq);
        }
        return new ReferenceKvCacheResult<TReal> { Output = output, LogSumExp = lse, KCache = kCache, VCache = vCache, AppendedRows = appended };
    }

    /// <summary>A head vector rotated at <paramref name="position"/> (clamped to the table): each rotated pair (a, b) is the
    /// complex number a + ib times cos + i sin. Unrotated dims are copied as they are.</summary>
    private static TReal[] Rotated<TReal>(ReferenceKvCacheProblem<TReal> p, ReadOnlySpan<TReal> x, int position, Func<TReal, TReal> roundStored)
        where TReal : IFloatingPointIeee754<TReal>
    {
        var result = x.ToArray();
        int pairs = p.RotaryPairs;
        if (pairs == 0) return result;
        int row = Math.Clamp(position, 0, p.RotaryPositions - 1);
        for (int j = 0; j < pairs; j++)
        {
            var (a, b) = p.RotaryInterleaved ? (2 * j, 2 * j + 1) : (j, pairs + j);
            TReal re = x[a], im = x[b], c = p.RotaryCos![row * pairs + j], s = p.RotarySin![row * pairs + j];
            result[a] = roundStored(re * c - im * s);
            result[b] = roundStored(re * s + im * c);
        }
        return result;
    }
}
