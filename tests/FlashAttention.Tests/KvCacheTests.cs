using System.Buffers;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>
/// <c>flash_attn_with_kvcache</c> on the CPU against the float64 reference: contiguous and paged caches (shuffled pages, odd
/// page sizes), ragged cache lengths with appends across page boundaries, cache_batch_idx, rotary (interleaved and NeoX,
/// partial), GQA/MQA and every score modifier; then equivalences with the plain forward and between cache layouts, empty
/// work, and validation (nothing written to the cache on rejection).
/// </summary>
public sealed class KvCacheTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<string> Cases() => new(
        "decode-contiguous-gqa", "decode-paged16-mqa-rotary", "prefill-paged7-neox", "batch-index-window", "noncausal-rotary-softcap",
        "whole-cache-alibi", "seqlens-only-paged-alibi-batch", "queries-past-keys", "everything");

    private static (Dtype, KvCacheProblem, AttentionOptions) Case(string name, TestRandom random) => name switch
    {
        // One new token per sequence, an empty cache among them, 8 query heads over 2 kv heads.
        "decode-contiguous-gqa" => (Dtype.Fp16,
            new KvCacheProblem { Batch = 3, HeadsQ = 8, HeadsKv = 2, HeadDim = 128, SeqlenCache = 77, CacheSeqlens = [0, 40, 76], Append = true, SeqlenNew = 1 },
            AttentionOptions.Default),
        // Appends at the last row of a page (15), into a fresh page (0), and to fill the cache (79); partial interleaved rotary.
        "decode-paged16-mqa-rotary" => (Dtype.Bf16,
            new KvCacheProblem
            {
                Batch = 4, HeadsQ = 4, HeadsKv = 1, HeadDim = 64, PageSize = 16, MaxBlocks = 5, SpareEntries = 3, CacheSeqlens = [15, 0, 63, 79],
                Append = true, SeqlenNew = 1, RotaryDim = 32,
            },
            new AttentionOptions { Causal = true }),
        // Five new rows that cross page boundaries (5..9 over pages of 7; 30..34 into the sixth page); NeoX rotary on 24 of 40 dims.
        "prefill-paged7-neox" => (Dtype.Fp32,
            new KvCacheProblem
            {
                Batch = 3, SeqlenQ = 5, HeadsQ = 6, HeadsKv = 2, HeadDim = 40, PageSize = 7, MaxBlocks = 6, SpareEntries = 2,
                CacheSeqlens = [5, 0, 30], Append = true, SeqlenNew = 5, RotaryDim = 24, RotaryInterleaved = false,
            },
            new AttentionOptions { Causal = true }),
        // Sequences mapped to shuffled cache rows; a window (not causal) still rotates q row by row.
        "batch-index-window" => (Dtype.Fp16,
            new KvCacheProblem
            {
                Batch = 4, SeqlenQ = 3, HeadsQ = 4, HeadsKv = 4, HeadDim = 64, SeqlenCache = 50, SpareEntries = 3, BatchIndex = true,
                CacheSeqlens = [0, 12, 47, 20], Append = true, SeqlenNew = 3, RotaryDim = 16,
            },
            new AttentionOptions { WindowLeft = 8, WindowRight = 2 }),
        // No mask: every query row is rotated at cache_seqlens[b].
        "noncausal-rotary-softcap" => (Dtype.Bf16,
            new KvCacheProblem
            {
                Batch = 2, SeqlenQ = 4, HeadsQ = 8, HeadsKv = 2, HeadDim = 128, PageSize = 16, MaxBlocks = 4, CacheSeqlens = [3, 40],
                Append = true, SeqlenNew = 4, RotaryDim = 64, RotaryInterleaved = false,
            },
            new AttentionOptions { Softcap = 3f }),
        // No cache_seqlens and no append: attention over the whole cache.
        "whole-cache-alibi" => (Dtype.Fp32,
            new KvCacheProblem { Batch = 2, SeqlenQ = 2, HeadsQ = 4, HeadsKv = 2, HeadDim = 64, SeqlenCache = 37, SpareEntries = 1 },
            new AttentionOptions { AlibiSlopes = Tensor.Create(random.Uniform(4, 0.05f, 0.5f), [4]) }),
        // cache_seqlens without k_new: each sequence attends over its cached prefix only.
        "seqlens-only-paged-alibi-batch" => (Dtype.Fp16,
            new KvCacheProblem
            {
                Batch = 3, SeqlenQ = 3, HeadsQ = 4, HeadsKv = 1, HeadDim = 40, PageSize = 7, MaxBlocks = 8, SpareEntries = 1,
                CacheSeqlens = [0, 9, 56], PoisonUnusedPages = true,
            },
            new AttentionOptions { Causal = true, AlibiSlopes = Tensor.Create(random.Uniform(12, 0.05f, 0.5f), [3, 4]) }),
        // More queries than keys: causal rows that see nothing (O = 0, LSE = +inf); q positions past seqlen_ro clamp to its last row.
        "queries-past-keys" => (Dtype.Bf16,
            new KvCacheProblem
            {
                Batch = 3, SeqlenQ = 6, HeadsQ = 2, HeadsKv = 1, HeadDim = 64, SeqlenCache = 24, CacheSeqlens = [0, 22, 10],
                Append = true, SeqlenNew = 2, RotaryDim = 32,
            },
            new AttentionOptions { Causal = true }),
        "everything" => (Dtype.Fp32,
            new KvCacheProblem
            {
                Batch = 2, SeqlenQ = 4, HeadsQ = 6, HeadsKv = 3, HeadDim = 59, PageSize = 7, MaxBlocks = 5, SpareEntries = 4,
                CacheSeqlens = [6, 20], Append = true, SeqlenNew = 4, RotaryDim = 32, RotaryInterleaved = false, PoisonUnusedPages = true,
            },
            new AttentionOptions
            {
                SoftmaxScale = 0.2f, Softcap = 4f, WindowLeft = 10, WindowRight = 0,
                AlibiSlopes = Tensor.Create(random.Uniform(12, 0.05f, 0.5f), [2, 6]),
            }),
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, null),
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesReference(string name)
    {
        var random = new TestRandom();
        var (dtype, problem, options) = Case(name, random);
        switch (dtype)
        {
            case Dtype.Fp32: KvCacheCheck.Run(problem, options, KvCacheInputs<float>.Create(problem, random)); break;
            case Dtype.Fp16: KvCacheCheck.Run(problem, options, KvCacheInputs<Half>.Create(problem, random)); break;
            default: KvCacheCheck.Run(problem, options, KvCacheInputs<BFloat16>.Create(problem, random)); break;
        }
    }

    /// <summary>A contiguous cache with no cache arguments is plain attention over it: the same engine, so bit for bit.</summary>
    [Fact]
    public void WholeContiguousCacheEqualsForward()
    {
        var random = new TestRandom();
        var q = Tensor.Create(Precision<Half>.FromFloats(random.Normal(2 * 9 * 4 * 40)), [2, 9, 4, 40]);
        var k = Tensor.Create(Precision<Half>.FromFloats(random.Normal(2 * 70 * 2 * 40)), [2, 70, 2, 40]);
        var v = Tensor.Create(Precision<Half>.FromFloats(random.Normal(2 * 70 * 2 * 40)), [2, 70, 2, 40]);
        var options = new AttentionOptions { Causal = true, Softcap = 5f };
        var expected = FlashAttention.Forward<Half>(q, k, v, options, Ct);
        var actual = FlashAttention.ForwardWithKvCache<Half>(q, k, v, options: options, cancellationToken: Ct);
        string context = $"[{random}]";
        Tolerance.AssertIdentical("O", Precision<Half>.Flatten(actual.Output), Precision<Half>.Flatten(expected.Output), context);
        Tolerance.AssertIdentical("LSE", Flat.Of(actual.LogSumExp), Flat.Of(expected.LogSumExp), context);
    }

    /// <summary>The same sequences in a contiguous cache and scattered over shuffled pages (unused entries invalid) give identical
    /// results and identical appended rows.</summary>
    [Fact]
    public void PagedEqualsContiguous()
    {
        var random = new TestRandom();
        const int batch = 2, pageSize = 7, maxBlocks = 4, capacity = pageSize * maxBlocks, hkv = 2, d = 48, seqlenNew = 3;
        int[] seqlens = [5, 17];
        var paged = new KvCacheProblem
        {
            Batch = batch, SeqlenQ = 3, HeadsQ = 4, HeadsKv = hkv, HeadDim = d, PageSize = pageSize, MaxBlocks = maxBlocks, SpareEntries = 2,
            CacheSeqlens = seqlens, Append = true, SeqlenNew = seqlenNew, RotaryDim = 16, PoisonUnusedPages = true,
        };
        var inputs = KvCacheInputs<BFloat16>.Create(paged, random);
        var options = new AttentionOptions { Causal = true };
        var cacheOptions = new KvCacheOptions { RotaryInterleaved = true };
        var fromPages = KvCacheCheck.RunCpu(inputs, options, cacheOptions);

        // Lay the paged contents out contiguously: row b holds positions 0 .. capacity - 1 of sequence b (unused pages: zeros).
        int row = hkv * d;
        BFloat16[] Contiguous(BFloat16[] pagedCache)
        {
            var result = new BFloat16[batch * capacity * row];
            for (int b = 0; b < batch; b++)
                for (int j = 0; j < paged.Length(b); j++)
                {
                    int page = inputs.BlockTable![b * maxBlocks + j / pageSize];
                    Array.Copy(pagedCache, (page * pageSize + j % pageSize) * row, result, (b * capacity + j) * row, row);
                }
            return result;
        }
        var contiguous = paged with { PageSize = 0, MaxBlocks = 0, SeqlenCache = capacity, SpareEntries = 0, PoisonUnusedPages = false };
        var contiguousInputs = new KvCacheInputs<BFloat16>
        {
            Problem = contiguous, Random = random, Q = inputs.Q, KNew = inputs.KNew, VNew = inputs.VNew, RotaryCos = inputs.RotaryCos,
            RotarySin = inputs.RotarySin, KCache = Contiguous(inputs.KCache), VCache = Contiguous(inputs.VCache),
        };
        var fromRows = KvCacheCheck.RunCpu(contiguousInputs, options, cacheOptions);

        string context = $"[{random}]";
        Tolerance.AssertIdentical("O", Precision<BFloat16>.ToDoubles(fromPages.Output), Precision<BFloat16>.ToDoubles(fromRows.Output), context);
        Tolerance.AssertIdentical("LSE", fromPages.LogSumExp, fromRows.LogSumExp, context);
        Tolerance.AssertIdentical("kCache", Precision<BFloat16>.ToDoubles(Contiguous(fromPages.KCache)), Precision<BFloat16>.ToDoubles(fromRows.KCache), context);
        Tolerance.AssertIdentical("vCache", Precision<BFloat16>.ToDoubles(Contiguous(fromPages.VCache)), Precision<BFloat16>.ToDoubles(fromRows.VCache), context);
    }

    /// <summary>q and the caches as strided views (a head slice of wider tensors) give the results of dense copies.</summary>
    [Fact]
    public void StridedViewsEqualDenseCopies()
    {
        var random = new TestRandom();
        const int batch = 2, sq = 2, hq = 4, hkv = 2, d = 32, cache = 20;
        var qWide = Tensor.Create(random.Normal(batch * sq * 2 * hq * d), [batch, sq, 2 * hq, d]);
        var kWide = Tensor.Create(random.Normal(batch * cache * 3 * hkv * d), [batch, cache, 3 * hkv, d]);
        var vWide = Tensor.Create(random.Normal(batch * cache * 3 * hkv * d), [batch, cache, 3 * hkv, d]);
        var kNew = Tensor.Create(random.Normal(batch * hkv * d), [batch, 1, hkv, d]);
        var vNew = Tensor.Create(random.Normal(batch * hkv * d), [batch, 1, hkv, d]);
        var qView = qWide.AsReadOnlyTensorSpan().Slice(NRange.All, NRange.All, new NRange(hq, 2 * hq), NRange.All);
        var kView = kWide.AsTensorSpan().Slice(NRange.All, NRange.All, new NRange(hkv, 2 * hkv), NRange.All);
        var vView = vWide.AsTensorSpan().Slice(NRange.All, NRange.All, new NRange(2 * hkv, 3 * hkv), NRange.All);
        var qDense = Dense(qView);
        var kDense = Tensor.Create(Dense(kView), [batch, cache, hkv, d]);
        var vDense = Tensor.Create(Dense(vView), [batch, cache, hkv, d]);
        int[] seqlens = [4, 19];
        var options = new AttentionOptions { Causal = true };

        var strided = FlashAttention.ForwardWithKvCache<float>(qView, kView, vView, kNew, vNew, seqlens, options: options, cancellationToken: Ct);
        var dense = FlashAttention.ForwardWithKvCache<float>(Tensor.Create(qDense, [batch, sq, hq, d]), kDense, vDense, kNew, vNew, seqlens,
            options: options, cancellationToken: Ct);
        string context = $"[{random}]";
        Tolerance.AssertIdentical("O", KvCacheCheck.Flatten(strided.Output), KvCacheCheck.Flatten(dense.Output), context);
        Tolerance.AssertIdentical("LSE", KvCacheCheck.Flatten(strided.LogSumExp), KvCacheCheck.Flatten(dense.LogSumExp), context);
        Tolerance.AssertIdentical("kCache", Dense(kView), KvCacheCheck.Flatten(kDense), context);
        Tolerance.AssertIdentical("vCache", Dense(vView), KvCacheCheck.Flatten(vDense), context);

        static float[] Dense(ReadOnlyTensorSpan<float> view)
        {
            var flat = new float[view.FlattenedLength];
            view.FlattenTo(flat);
            return flat;
        }
    }

    [Fact]
    public void EmptyWork()
    {
        var random = new TestRandom();
        const int hkv = 2, d = 16;
        var kCache = Tensor.Create(random.Normal(3 * 8 * hkv * d), [3, 8, hkv, d]);
        var vCache = Tensor.Create(random.Normal(3 * 8 * hkv * d), [3, 8, hkv, d]);

        // Batch 0: empty results, nothing touched (cache_seqlens is an empty span here, which counts as given).
        var none = FlashAttention.ForwardWithKvCache<float>(Tensor.CreateFromShape<float>([0, 2, 4, d]), kCache, vCache,
            Tensor.CreateFromShape<float>([0, 1, hkv, d]), Tensor.CreateFromShape<float>([0, 1, hkv, d]), cancellationToken: Ct);
        Assert.Equal([0, 2, 4, d], none.Output.Lengths.ToArray());
        Assert.Equal([0, 4, 2], none.LogSumExp.Lengths.ToArray());

        // seqlen_q 0: the append still happens.
        var before = KvCacheCheck.Flatten(kCache);
        var kNew = Tensor.Create(random.Normal(3 * hkv * d), [3, 1, hkv, d]);
        var empty = FlashAttention.ForwardWithKvCache<float>(Tensor.CreateFromShape<float>([3, 0, 4, d]), kCache, vCache, kNew,
            Tensor.Create(random.Normal(3 * hkv * d), [3, 1, hkv, d]), [0, 3, 7], cancellationToken: Ct);
        Assert.Equal([3, 0, 4, d], empty.Output.Lengths.ToArray());
        Assert.Equal([3, 4, 0], empty.LogSumExp.Lengths.ToArray());
        var after = KvCacheCheck.Flatten(kCache);
        var appended = KvCacheCheck.Flatten(kNew);
        int row = hkv * d;
        int[] positions = [0, 3, 7];
        for (int b = 0; b < 3; b++)
        {
            Tolerance.AssertIdentical($"appended row {b}", after.AsSpan((b * 8 + positions[b]) * row, row), appended.AsSpan(b * row, row));
            after.AsSpan((b * 8 + positions[b]) * row, row).Clear();
            before.AsSpan((b * 8 + positions[b]) * row, row).Clear();
        }
        Tolerance.AssertIdentical("other rows", after, before);

        // Empty caches (cache_seqlens 0, no append): every row sees nothing, so O = 0 and LSE = +inf.
        var q = Tensor.Create(random.Normal(3 * 2 * 4 * d), [3, 2, 4, d]);
        var blind = FlashAttention.ForwardWithKvCache<float>(q, kCache, vCache, cacheSeqlens: [0, 0, 0], cancellationToken: Ct);
        Assert.All(KvCacheCheck.Flatten(blind.Output), x => Assert.Equal(0f, x));
        Assert.All(KvCacheCheck.Flatten(blind.LogSumExp), x => Assert.Equal(float.PositiveInfinity, x));
    }
}
