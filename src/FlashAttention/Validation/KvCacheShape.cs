namespace FlashAttn.Validation;

/// <summary>
/// The validated geometry of one <c>flash_attn_with_kvcache</c> call. A sequence's keys are its cache rows 0 .. len - 1 with
/// len = cache_seqlens[b] + SeqlenNew (or <see cref="Capacity"/> without cache_seqlens): the new keys are appended first.
/// </summary>
internal sealed class KvCacheShape
{
    public required int Batch { get; init; }
    public required int SeqlenQ { get; init; }
    public required int HeadsQ { get; init; }
    public required int HeadsKv { get; init; }
    public required int HeadDim { get; init; }

    /// <summary>Paged cache: (num_blocks, page_size, heads_kv, d) addressed through a (batch, max_blocks) block table.</summary>
    public required bool Paged { get; init; }

    /// <summary>Dimension 0 of the cache: batch_cache (contiguous) or num_blocks (paged).</summary>
    public required int CacheBatch { get; init; }

    /// <summary>Dimension 1 of the cache: seqlen_cache (contiguous) or page_size (paged).</summary>
    public required int CacheRows { get; init; }

    /// <summary>Block-table columns (paged); 0 otherwise.</summary>
    public required int MaxBlocksPerSequence { get; init; }

    /// <summary>Most keys one sequence can hold: seqlen_cache, or max_blocks * page_size.</summary>
    public int Capacity => Paged ? MaxBlocksPerSequence * CacheRows : CacheRows;

    /// <summary>Rows of k_new / v_new per sequence; 0 without an append.</summary>
    public required int SeqlenNew { get; init; }

    /// <summary>Rotary dims (2 x the columns of rotary_cos); 0 without rotary.</summary>
    public required int RotaryDim { get; init; }

    /// <summary>Rows of rotary_cos / rotary_sin (positions they cover); positions past it use the last row.</summary>
    public required int RotaryPositions { get; init; }

    public required bool HasCacheSeqlens { get; init; }
    public required bool HasCacheBatchIndex { get; init; }

    public int GroupSize => HeadsQ / HeadsKv;

    /// <summary>Keys that sequence <paramref name="batch"/> attends over (after the append): cache_seqlens[b] + seqlen_new, or the
    /// capacity without cache_seqlens.</summary>
    public int SequenceLength(ReadOnlySpan<int> cacheSeqlens, int batch) => HasCacheSeqlens ? cacheSeqlens[batch] + SeqlenNew : Capacity;

    /// <summary>The attention geometry for the shared option checks (ALiBi shapes): a fixed batch at the cache capacity.</summary>
    public ProblemShape Attention => ProblemShape.Fixed(Batch, SeqlenQ, Capacity, HeadsQ, HeadsKv, HeadDim);
}
