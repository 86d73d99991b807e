namespace FlashAttn.Validation;

/// <summary>
/// Checks the arguments of <c>flash_attn_with_kvcache</c> for every path before anything is written to the cache. Shape
/// and layout only: the values of cache_seqlens, cache_batch_idx and the block table are checked by the CPU path and
/// clamped by the CUDA kernels (reading them back would synchronise the stream).
/// </summary>
internal static class KvCacheValidator
{
    public const int MaxSplits = 128;

    /// <summary>Absent optional tensors are null.</summary>
    public static KvCacheShape Validate(TensorArg q, TensorArg kCache, TensorArg vCache, TensorArg? kNew, TensorArg? vNew,
        TensorArg? cacheSeqlens, TensorArg? cacheBatchIndex, TensorArg? blockTable, TensorArg? rotaryCos, TensorArg? rotarySin,
        AttentionOptions options, KvCacheOptions cacheOptions, Type elementType)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(cacheOptions);
        ShapeValidator.ElementType(elementType, q.Name);
        ShapeValidator.Rank(q, 4, "(batch, seqlen_q, heads, headdim)");
        bool paged = blockTable is not null;
        string cacheLayout = paged ? "(num_blocks, page_size, heads_kv, headdim)" : "(batch_cache, seqlen_cache, heads_kv, headdim)";
        ShapeValidator.Rank(kCache, 4, cacheLayout);
        ShapeValidator.Rank(vCache, 4, cacheLayout);
        ShapeValidator.SameLengths(kCache, vCache, vCache.Name, mustMatch: kCache.Name);
        foreach (var t in new[] { q, kCache, vCache }) ShapeValidator.LastDimContiguous(t);

        int batch = q.Length(0), seqlenQ = q.Length(1), headsQ = q.Length(2), headDim = q.Length(3);
        int headsKv = kCache.Length(2);
        if (headDim < 1 || headDim > ShapeValidator.MaxHeadDim)
            throw Fail(q.Name, $"head dim {headDim} is not supported; flash attention takes head dims 1..{ShapeValidator.MaxHeadDim}.");
        if (kCache.Length(3) != headDim)
            throw Fail(kCache.Name, $"head dim {kCache.Length(3)} does not match q's head dim {headDim}.");
        if (headsKv == 0 || headsQ % headsKv != 0)
            throw Fail(kCache.Name, $"heads_kv = {headsKv} must divide heads_q = {headsQ} (MQA/GQA groups query heads over key/value heads).");
        if (kCache.Length(1) < 1)
            throw Fail(kCache.Name, $"dimension 1 ({(paged ? "page_size" : "seqlen_cache")}) must be at least 1; got shape {kCache.ShapeText}.");

        int maxBlocks = 0;
        if (blockTable is { } table)
        {
            if (table.Rank != 2 || table.Lengths[0] != batch)
                throw Fail(table.Name, $"must be (batch = {batch}, max_blocks_per_sequence) int32 page indices; got {table.ShapeText}.");
            if (table.Lengths[1] > 1 && table.Strides[1] != 1)
                throw Fail(table.Name, "its last dimension must be contiguous (stride 1).");
            maxBlocks = table.Length(1);
            if (cacheBatchIndex is not null)
                throw Fail(cacheBatchIndex.Value.Name, "cannot be combined with a paged cache (block table), as in flash-attn; map sequences to pages through the block table instead.");
        }
        else if (cacheBatchIndex is null && kCache.Length(0) < batch)
            throw Fail(kCache.Name, $"holds {kCache.Length(0)} sequences but q has batch {batch}; pass cacheBatchIndex to pick cache rows, or a larger cache.");

        Vector(cacheSeqlens, batch, "cache lengths");
        Vector(cacheBatchIndex, batch, "cache batch indices");

        int seqlenNew = 0;
        if ((kNew is null) != (vNew is null))
            throw Fail(kNew is null ? "kNew" : "vNew", "k_new and v_new go together: pass both (to append) or neither.");
        if (kNew is { } kn && vNew is { } vn)
        {
            ShapeValidator.Rank(kn, 4, "(batch, seqlen_new, heads_kv, headdim)");
            ShapeValidator.SameLengths(kn, vn, vn.Name, mustMatch: kn.Name);
            ShapeValidator.LastDimContiguous(kn);
            ShapeValidator.LastDimContiguous(vn);
            if (kn.Length(0) != batch || kn.Length(2) != headsKv || kn.Length(3) != headDim)
                throw Fail(kn.Name, $"must be (batch = {batch}, seqlen_new, heads_kv = {headsKv}, headdim = {headDim}); got {kn.ShapeText}.");
            if (cacheSeqlens is null)
                throw Fail("cacheSeqlens", "is required with k_new / v_new: it says where each sequence's new keys are appended.");
            seqlenNew = kn.Length(1);
        }

        var shape = new KvCacheShape
        {
            Batch = batch,
            SeqlenQ = seqlenQ,
            HeadsQ = headsQ,
            HeadsKv = headsKv,
            HeadDim = headDim,
            Paged = paged,
            CacheBatch = kCache.Length(0),
            CacheRows = kCache.Length(1),
            MaxBlocksPerSequence = maxBlocks,
            SeqlenNew = seqlenNew,
            RotaryDim = rotaryCos is { } c ? 2 * (c.Rank == 2 ? c.Length(1) : 0) : 0,
            RotaryPositions = rotaryCos is { } c2 && c2.Rank == 2 ? c2.Length(0) : 0,
            HasCacheSeqlens = cacheSeqlens is not null,
            HasCacheBatchIndex = cacheBatchIndex is not null,
        };
        if (seqlenNew > shape.Capacity)
            throw Fail(kNew!.Value.Name, $"appends {seqlenNew} keys per sequence but the cache holds at most {shape.Capacity}.");
        Rotary(rotaryCos, rotarySin, shape, kNew is not null);

        if (options.DropoutProbability != 0f)
            throw Fail("options.DropoutProbability", "must be 0: KV-cache attention is inference-only (flash-attn's flash_attn_with_kvcache has no dropout).");
        if (options.ReturnProbabilities)
            throw Fail("options.ReturnProbabilities", "is not available with a KV cache; use Forward for probabilities.");
        ShapeValidator.Options(options, shape.Attention);
        if (cacheOptions.NumSplits < 0 || cacheOptions.NumSplits > MaxSplits)
            throw Fail("cacheOptions.NumSplits", $"must be 0 (automatic) or 1..{MaxSplits}; got {cacheOptions.NumSplits}.");
        return shape;
    }

    private static void Rotary(TensorArg? cos, TensorArg? sin, KvCacheShape shape, bool appends)
    {
        if (cos is null && sin is null) return;
        if (cos is null || sin is null)
            throw Fail(cos is null ? "rotaryCos" : "rotarySin", "rotary_cos and rotary_sin go together: pass both or neither.");
        var c = cos.Value;
        var s = sin.Value;
        if (!appends)
            throw Fail(c.Name, "rotary embedding needs k_new / v_new (it rotates q and the appended keys, as in flash-attn).");
        if (c.Rank != 2)
            throw Fail(c.Name, $"must be (seqlen_ro, rotary_dim / 2); got {c.ShapeText}.");
        ShapeValidator.SameLengths(c, s, s.Name, mustMatch: c.Name);
        ShapeValidator.LastDimContiguous(c);
        ShapeValidator.LastDimContiguous(s);
        if (shape.RotaryDim < 2 || shape.RotaryDim > shape.HeadDim)
            throw Fail(c.Name, $"rotary_dim = 2 x {c.Lengths[1]} must be in 2..headdim ({shape.HeadDim}).");
        // At least one row even for an empty cache: q is still rotated, at a position clamped to the last row.
        if (shape.RotaryPositions < Math.Max(1, shape.Capacity))
            throw Fail(c.Name, $"covers {shape.RotaryPositions} positions but the cache holds up to {shape.Capacity} keys; " +
                $"pass at least {Math.Max(1, shape.Capacity)} rows.");
    }

    /// <summary>
    /// The values of cache_seqlens, cache_batch_idx and the block table, where they live on the host (the CPU path), checked
    /// before anything is written to the cache: each length in [0, capacity - seqlen_new], each batch index in
    /// [0, batch_cache), and each page that a sequence uses (those covering its positions 0 .. len - 1) in [0, num_blocks).
    /// Unused block-table entries are not read, as on the GPU.
    /// </summary>
    /// <param name="shape">The validated geometry.</param>
    /// <param name="cacheSeqlens">(batch) lengths, or empty when absent.</param>
    /// <param name="cacheBatchIndex">(batch) cache rows, or empty when absent.</param>
    /// <param name="blockTable">The block table copied densely, (batch, max_blocks) row-major; empty for a contiguous cache.</param>
    public static void HostValues(KvCacheShape shape, ReadOnlySpan<int> cacheSeqlens, ReadOnlySpan<int> cacheBatchIndex, ReadOnlySpan<int> blockTable)
    {
        int maxLength = shape.Capacity - shape.SeqlenNew;
        for (int b = 0; b < shape.Batch && shape.HasCacheSeqlens; b++)
            if (cacheSeqlens[b] < 0 || cacheSeqlens[b] > maxLength)
                throw Fail("cacheSeqlens", $"entry {b} is {cacheSeqlens[b]} but must be in [0, {maxLength}]: the cache holds " +
                    $"{shape.Capacity} keys per sequence" +
                    (shape.SeqlenNew > 0 ? $" and {shape.SeqlenNew} new keys are appended after the cached ones." : "."));
        for (int b = 0; b < shape.Batch && shape.HasCacheBatchIndex; b++)
            if (cacheBatchIndex[b] < 0 || cacheBatchIndex[b] >= shape.CacheBatch)
                throw Fail("cacheBatchIndex", $"entry {b} is {cacheBatchIndex[b]} but the cache has rows 0..{shape.CacheBatch - 1}.");
        if (!shape.Paged) return;
        for (int b = 0; b < shape.Batch; b++)
        {
            int pages = (shape.SequenceLength(cacheSeqlens, b) + shape.CacheRows - 1) / shape.CacheRows;
            for (int p = 0; p < pages; p++)
            {
                int page = blockTable[b * shape.MaxBlocksPerSequence + p];
                if (page < 0 || page >= shape.CacheBatch)
                    throw Fail("blockTable", $"entry ({b}, {p}) is {page} but the paged cache has pages 0..{shape.CacheBatch - 1}; " +
                        $"sequence {b} uses its first {pages} entries.");
            }
        }
    }

    private static void Vector(TensorArg? t, int batch, string what)
    {
        if (t is not { } v) return;
        if (v.Rank != 1 || v.Lengths[0] != batch)
            throw Fail(v.Name, $"must be a vector of {batch} int32 {what} (one per sequence); got {v.ShapeText}.");
        if (batch > 1 && v.Strides[0] != 1)
            throw Fail(v.Name, "must be contiguous (stride 1).");
    }

    private static ArgumentException Fail(string name, string message) => ShapeValidator.Fail(name, message);
}
