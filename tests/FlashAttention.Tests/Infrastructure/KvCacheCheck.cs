using FlashAttn.Reference;

namespace FlashAttn.Tests.Infrastructure;

/// <summary>
/// The geometry and features of one <c>flash_attn_with_kvcache</c> test problem. The cache is contiguous
/// (SeqlenCache rows per sequence) unless PageSize &gt; 0 (MaxBlocks shuffled pages per sequence).
/// </summary>
internal sealed record KvCacheProblem
{
    public required int Batch { get; init; }
    public int SeqlenQ { get; init; } = 1;
    public required int HeadsQ { get; init; }
    public required int HeadsKv { get; init; }
    public required int HeadDim { get; init; }

    /// <summary>Contiguous cache: rows per sequence (seqlen_cache).</summary>
    public int SeqlenCache { get; init; }

    /// <summary>&gt; 0: a paged cache with this page size and <see cref="MaxBlocks"/> block-table columns.</summary>
    public int PageSize { get; init; }
    public int MaxBlocks { get; init; }

    /// <summary>Cache rows (contiguous) or pages (paged) beyond what the batch needs, so indices are not all used.</summary>
    public int SpareEntries { get; init; }

    /// <summary>Map sequences to a shuffled choice of cache rows (cache_batch_idx; contiguous only).</summary>
    public bool BatchIndex { get; init; }

    /// <summary>cache_seqlens; null attends over the whole cache.</summary>
    public int[]? CacheSeqlens { get; init; }

    /// <summary>Pass k_new / v_new with <see cref="SeqlenNew"/> rows.</summary>
    public bool Append { get; init; }
    public int SeqlenNew { get; init; }

    /// <summary>0: no rotary; otherwise rotary_dim (even).</summary>
    public int RotaryDim { get; init; }
    public bool RotaryInterleaved { get; init; } = true;

    /// <summary>Fill the block-table entries no sequence uses with invalid page indices (they must be ignored).</summary>
    public bool PoisonUnusedPages { get; init; }

    public bool Paged => PageSize > 0;
    public int Capacity => Paged ? MaxBlocks * PageSize : SeqlenCache;
    public int CacheBlocks => Paged ? Batch * MaxBlocks + SpareEntries : Batch + SpareEntries;
    public int CacheRows => Paged ? PageSize : SeqlenCache;
    public int RotaryPositions => Math.Max(1, Capacity);
    public int Length(int b) => CacheSeqlens is null ? Capacity : CacheSeqlens[b] + (Append ? SeqlenNew : 0);

    public nint[] QLengths => [Batch, SeqlenQ, HeadsQ, HeadDim];
    public nint[] CacheLengths => [CacheBlocks, CacheRows, HeadsKv, HeadDim];
    public nint[] NewLengths => [Batch, SeqlenNew, HeadsKv, HeadDim];
    public nint[] RotaryLengths => [RotaryPositions, RotaryDim / 2];

    public override string ToString() =>
        $"b={Batch} sq={SeqlenQ} hq={HeadsQ} hkv={HeadsKv} d={HeadDim} " +
        (Paged ? $"paged page={PageSize} blocks={MaxBlocks}+{SpareEntries}" : $"contiguous cache={SeqlenCache}x{CacheBlocks}{(BatchIndex ? " batch_idx" : "")}") +
        $" seqlens=[{(CacheSeqlens is null ? "whole" : string.Join(",", CacheSeqlens))}]" + (Append ? $" new={SeqlenNew}" : "") +
        (RotaryDim > 0 ? $" rotary={RotaryDim}{(RotaryInterleaved ? "i" : "n")}" : "");
}

/// <summary>Random inputs of one problem, rounded to the element type; caches are the values before the call.</summary>
internal sealed class KvCacheInputs<T> where T : unmanaged
{
    public required KvCacheProblem Problem { get; init; }
    public required TestRandom Random { get; init; }
    public required T[] Q { get; init; }
    public required T[] KCache { get; init; }
    public required T[] VCache { get; init; }
    public T[]? KNew { get; init; }
    public T[]? VNew { get; init; }
    public int[]? BatchIndex { get; init; }
    public int[]? BlockTable { get; init; }
    public T[]? RotaryCos { get; init; }
    public T[]? RotarySin { get; init; }

    public static KvCacheInputs<T> Create(KvCacheProblem p, TestRandom? random = null)
    {
        random ??= new TestRandom();
        long cacheCount = (long)p.CacheBlocks * p.CacheRows * p.HeadsKv * p.HeadDim, newCount = (long)p.Batch * p.SeqlenNew * p.HeadsKv * p.HeadDim;
        T[] Normal(long count) => Precision<T>.FromFloats(random.Normal(count));
        int[]? blockTable = null;
        if (p.Paged)
        {
            // Distinct pages in shuffled order, so sequence b's pages are neither contiguous nor in order.
            var pages = Enumerable.Range(0, p.CacheBlocks).ToArray();
            random.Random.Shuffle(pages);
            blockTable = pages[..(p.Batch * p.MaxBlocks)];
            if (p.PoisonUnusedPages)
                for (int b = 0; b < p.Batch; b++)
                    for (int j = (p.Length(b) + p.PageSize - 1) / p.PageSize; j < p.MaxBlocks; j++)
                        blockTable[b * p.MaxBlocks + j] = j % 2 == 0 ? -1 : p.CacheBlocks + 3;
        }
        int[]? batchIndex = null;
        if (p.BatchIndex)
        {
            var rows = Enumerable.Range(0, p.CacheBlocks).ToArray();
            random.Random.Shuffle(rows);
            batchIndex = rows[..p.Batch];
        }
        T[]? cos = null, sin = null;
        if (p.RotaryDim > 0)
        {
            // Random angles rather than pos * inv_freq: neighbouring positions then differ in every pair, so an off-by-one shows.
            var angles = random.Uniform(p.RotaryPositions * (p.RotaryDim / 2), 0f, 2 * MathF.PI);
            cos = Precision<T>.FromFloats(Array.ConvertAll(angles, MathF.Cos));
            sin = Precision<T>.FromFloats(Array.ConvertAll(angles, MathF.Sin));
        }
        return new KvCacheInputs<T>
        {
            Problem = p,
            Random = random,
            Q = Normal((long)p.Batch * p.SeqlenQ * p.HeadsQ * p.HeadDim),
            KCache = Normal(cacheCount),
            VCache = Normal(cacheCount),
            KNew = p.Append ? Normal(newCount) : null,
            VNew = p.Append ? Normal(newCount) : null,
            BatchIndex = batchIndex,
            BlockTable = blockTable,
            RotaryCos = cos,
            RotarySin = sin,
        };
    }

    /// <summary>The reference's view of the inputs, converted exactly to <typeparamref name="TReal"/>.</summary>
    public ReferenceKvCacheProblem<TReal> ForReference<TReal>(Func<T[], TReal[]> convert) => new()
    {
        Batch = Problem.Batch,
        SeqlenQ = Problem.SeqlenQ,
        HeadsQ = Problem.HeadsQ,
        HeadsKv = Problem.HeadsKv,
        HeadDim = Problem.HeadDim,
        Q = convert(Q),
        KCache = convert(KCache),
        VCache = convert(VCache),
        CacheBlocks = Problem.CacheBlocks,
        CacheRows = Problem.CacheRows,
        KNew = KNew is null ? null : convert(KNew),
        VNew = VNew is null ? null : convert(VNew),
        SeqlenNew = Problem.Append ? Problem.SeqlenNew : 0,
        CacheSeqlens = Problem.CacheSeqlens,
        CacheBatchIndex = BatchIndex,
        BlockTable = BlockTable,
        MaxBlocks = Problem.MaxBlocks,
        RotaryCos = RotaryCos is null ? null : convert(RotaryCos),
        RotarySin = RotarySin is null ? null : convert(RotarySin),
        RotaryPositions = Problem.RotaryPositions,
        RotaryInterleaved = Problem.RotaryInterleaved,
    };
}

/// <summary>What one execution path returned: O and LSE flattened, and the caches after the call.</summary>
internal sealed record KvCacheOutcome<T>(T[] Output, float[] LogSumExp, T[] KCache, T[] VCache, nint[] OutputLengths, nint[] LseLengths);

/// <summary>
/// Runs <c>flash_attn_with_kvcache</c> on random inputs and checks O, LSE and both caches against the float64 reference with
/// the tolerance rule (naive baseline: the reference in fp32 with rotated values rounded to T); cache rows the append does not
/// write must be bit-for-bit unchanged, and the value cache (never rotated) must equal the reference exactly.
/// </summary>
internal static class KvCacheCheck
{
    /// <param name="run">Runs the call on another execution path (the CUDA tests); null for the CPU path.</param>
    public static KvCacheOutcome<T> Run<T>(KvCacheProblem problem, AttentionOptions? options = null, KvCacheInputs<T>? inputs = null,
        Func<KvCacheInputs<T>, AttentionOptions, KvCacheOptions, KvCacheOutcome<T>>? run = null) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        inputs ??= KvCacheInputs<T>.Create(problem);
        var cacheOptions = new KvCacheOptions { RotaryInterleaved = problem.RotaryInterleaved };
        var outcome = (run ?? RunCpu)(inputs, options, cacheOptions);
        string context = $"[{Precision<T>.Name} {problem} {Describe.Options(options)} {inputs.Random}]";

        var settings = ReferenceSettings.From(options, problem.HeadDim, problem.Batch, problem.HeadsQ);
        var ref64 = ReferenceKvCache.Forward(inputs.ForReference(Precision<T>.ToDoubles), settings);
        var naive = ReferenceKvCache.Forward(inputs.ForReference(Precision<T>.ToFloats), settings, x => Precision<T>.ToFloat(Precision<T>.FromFloat(x)));

        Assert.Equal(problem.QLengths, outcome.OutputLengths);
        Assert.Equal([problem.Batch, problem.HeadsQ, problem.SeqlenQ], outcome.LseLengths);
        double u = Precision<T>.FloorUnit;
        Tolerance.AssertClose("O", Precision<T>.ToDoubles(outcome.Output), ref64.Output, Precision<T>.RoundThrough(naive.Output), u, context);
        Tolerance.AssertClose("LSE", Flat.Widen(outcome.LogSumExp), ref64.LogSumExp, Flat.Widen(naive.LogSumExp), u, context);
        Tolerance.AssertClose("kCache", Precision<T>.ToDoubles(outcome.KCache), ref64.KCache, Flat.Widen(naive.KCache), u, context);
        Tolerance.AssertIdentical("vCache", Precision<T>.ToDoubles(outcome.VCache), ref64.VCache, context);
        int rowElements = problem.HeadsKv * problem.HeadDim;
        for (int row = 0; row < ref64.AppendedRows.Length; row++)
        {
            if (ref64.AppendedRows[row]) continue;
            var range = new Range(row * rowElements, (row + 1) * rowElements);
            Tolerance.AssertIdentical($"kCache row {row} (not appended)", Precision<T>.ToDoubles(outcome.KCache[range]),
                Precision<T>.ToDoubles(inputs.KCache[range]), context);
        }
        return outcome;
    }

    /// <summary>The CPU path on copies of the caches (the inputs stay as they were).</summary>
    public static KvCacheOutcome<T> RunCpu<T>(KvCacheInputs<T> inputs, AttentionOptions options, KvCacheOptions cacheOptions) where T : unmanaged
    {
        var p = inputs.Problem;
        var kCache = Tensor.Create((T[])inputs.KCache.Clone(), p.CacheLengths);
        var vCache = Tensor.Create((T[])inputs.VCache.Clone(), p.CacheLengths);
        var result = FlashAttention.ForwardWithKvCache<T>(Tensor.Create(inputs.Q, p.QLengths), kCache, vCache,
            Optional(inputs.KNew, p.NewLengths), Optional(inputs.VNew, p.NewLengths), p.CacheSeqlens, inputs.BatchIndex,
            inputs.BlockTable is null ? default : Tensor.Create(inputs.BlockTable, [p.Batch, p.MaxBlocks]).AsReadOnlyTensorSpan(),
            Optional(inputs.RotaryCos, p.RotaryLengths), Optional(inputs.RotarySin, p.RotaryLengths), options, cacheOptions,
            TestContext.Current.CancellationToken);
        return new KvCacheOutcome<T>(Flatten(result.Output), Flatten(result.LogSumExp), Flatten(kCache), Flatten(vCache),
            result.Output.Lengths.ToArray(), result.LogSumExp.Lengths.ToArray());
    }

    public static ReadOnlyTensorSpan<T> Optional<T>(T[]? values, nint[] lengths) =>
        values is null ? default : Tensor.Create(values, lengths).AsReadOnlyTensorSpan();

    public static TE[] Flatten<TE>(Tensor<TE> tensor)
    {
        var flat = new TE[tensor.FlattenedLength];
        tensor.FlattenTo(flat);
        return flat;
    }
}
