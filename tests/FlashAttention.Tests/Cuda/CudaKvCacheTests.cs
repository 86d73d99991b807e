using System.Numerics.Tensors;
using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// flash_attn_with_kvcache on the GPU (append, rotary, paged caches, splits) through <see cref="KvCacheCheck"/>: O, LSE and
/// both caches after the in-place append against the float64 reference; rows the append must not touch stay bit-for-bit the
/// same. Paged caches use shuffled block tables (unused entries poisoned with out-of-range pages), page sizes that do not
/// divide 64, appends that cross page boundaries and ragged lengths including 0; each case also runs with forced splits.
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaKvCacheTests
{
    public static TheoryData<string, int> Cases()
    {
        var data = new TheoryData<string, int>();
        foreach (var name in new[]
                 {
                     "decode-gqa-append", "decode-paged16-rotary", "prefill-paged7-neox", "batch-index-window", "noncausal-rotary-softcap",
                     "long-paged-alibi", "queries-past-keys", "everything", "llama-decode-paged256",
                 })
            foreach (int splits in new[] { 0, 1, 5 })
                data.Add(name, splits);
        return data;
    }

    private static (Dtype, KvCacheProblem, AttentionOptions) Case(string name, TestRandom random) => name switch
    {
        "decode-gqa-append" => (Dtype.Fp16,
            new KvCacheProblem { Batch = 3, HeadsQ = 8, HeadsKv = 2, HeadDim = 128, SeqlenCache = 300, CacheSeqlens = [0, 140, 299], Append = true, SeqlenNew = 1 },
            AttentionOptions.Default),
        // Appends at the last row of a page, into a fresh page and to fill the cache; partial interleaved rotary.
        "decode-paged16-rotary" => (Dtype.Bf16,
            new KvCacheProblem
            {
                Batch = 4, HeadsQ = 4, HeadsKv = 1, HeadDim = 64, PageSize = 16, MaxBlocks = 9, SpareEntries = 3, CacheSeqlens = [15, 0, 63, 143],
                Append = true, SeqlenNew = 1, RotaryDim = 32, PoisonUnusedPages = true,
            },
            new AttentionOptions { Causal = true }),
        // Five new rows crossing pages of 7; NeoX rotary on 24 of 40 dims.
        "prefill-paged7-neox" => (Dtype.Bf16,
            new KvCacheProblem
            {
                Batch = 3, SeqlenQ = 5, HeadsQ = 6, HeadsKv = 2, HeadDim = 40, PageSize = 7, MaxBlocks = 30, SpareEntries = 2,
                CacheSeqlens = [5, 0, 200], Append = true, SeqlenNew = 5, RotaryDim = 24, RotaryInterleaved = false,
            },
            new AttentionOptions { Causal = true }),
        "batch-index-window" => (Dtype.Fp16,
            new KvCacheProblem
            {
                Batch = 4, SeqlenQ = 3, HeadsQ = 4, HeadsKv = 4, HeadDim = 64, SeqlenCache = 250, SpareEntries = 3, BatchIndex = true,
                CacheSeqlens = [0, 12, 240, 100], Append = true, SeqlenNew = 3, RotaryDim = 16,
            },
            new AttentionOptions { WindowLeft = 70, WindowRight = 2 }),
        "noncausal-rotary-softcap" => (Dtype.Bf16,
            new KvCacheProblem
            {
                Batch = 2, SeqlenQ = 4, HeadsQ = 8, HeadsKv = 2, HeadDim = 128, PageSize = 16, MaxBlocks = 20, CacheSeqlens = [3, 300],
                Append = true, SeqlenNew = 4, RotaryDim = 64, RotaryInterleaved = false,
            },
            new AttentionOptions { Softcap = 3f }),
        "long-paged-alibi" => (Dtype.Fp16,
            new KvCacheProblem
            {
                Batch = 3, SeqlenQ = 3, HeadsQ = 4, HeadsKv = 1, HeadDim = 256, PageSize = 100, MaxBlocks = 21, SpareEntries = 1,
                CacheSeqlens = [0, 9, 2050], PoisonUnusedPages = true,
            },
            new AttentionOptions { Causal = true, AlibiSlopes = Tensor.Create(random.Uniform(12, 0.05f, 0.5f), [3, 4]) }),
        "queries-past-keys" => (Dtype.Bf16,
            new KvCacheProblem
            {
                Batch = 3, SeqlenQ = 6, HeadsQ = 2, HeadsKv = 1, HeadDim = 64, SeqlenCache = 24, CacheSeqlens = [0, 22, 10],
                Append = true, SeqlenNew = 2, RotaryDim = 32,
            },
            new AttentionOptions { Causal = true }),
        "everything" => (Dtype.Fp16,
            new KvCacheProblem
            {
                Batch = 2, SeqlenQ = 4, HeadsQ = 6, HeadsKv = 3, HeadDim = 56, PageSize = 7, MaxBlocks = 60, SpareEntries = 4,
                CacheSeqlens = [6, 400], Append = true, SeqlenNew = 4, RotaryDim = 32, RotaryInterleaved = false, PoisonUnusedPages = true,
            },
            new AttentionOptions
            {
                SoftmaxScale = 0.2f, Softcap = 4f, WindowLeft = 100, WindowRight = 0,
                AlibiSlopes = Tensor.Create(random.Uniform(12, 0.05f, 0.5f), [2, 6]),
            }),
        // The shape the bench measures, small: 32 query heads over 8 kv heads, pages of 256, one new token.
        "llama-decode-paged256" => (Dtype.Bf16,
            new KvCacheProblem
            {
                Batch = 2, HeadsQ = 32, HeadsKv = 8, HeadDim = 128, PageSize = 256, MaxBlocks = 8, SpareEntries = 2,
                CacheSeqlens = [1000, 2047], Append = true, SeqlenNew = 1, RotaryDim = 128,
            },
            new AttentionOptions { Causal = true }),
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, null),
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesReference(string name, int splits)
    {
        GpuRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        var (dtype, problem, options) = Case(name, random);
        if (dtype == Dtype.Fp16) KvCacheCheck.Run(problem, options, KvCacheInputs<Half>.Create(problem, random), (i, o, c) => OnGpu(i, o, c with { NumSplits = splits }));
        else KvCacheCheck.Run(problem, options, KvCacheInputs<BFloat16>.Create(problem, random), (i, o, c) => OnGpu(i, o, c with { NumSplits = splits }));
    }

    [Fact]
    public void AppendHappensWithNoQueryRows()
    {
        GpuRequirement.SkipIfUnavailable();
        var problem = new KvCacheProblem { Batch = 2, SeqlenQ = 0, HeadsQ = 4, HeadsKv = 2, HeadDim = 64, SeqlenCache = 20, CacheSeqlens = [3, 10], Append = true, SeqlenNew = 2 };
        KvCacheCheck.Run(problem, AttentionOptions.Default, KvCacheInputs<Half>.Create(problem), OnGpu);
    }

    /// <summary>Uploads the inputs (caches copied, so the host inputs stay as they were), runs into poisoned outputs, downloads.</summary>
    private static KvCacheOutcome<T> OnGpu<T>(KvCacheInputs<T> inputs, AttentionOptions options, KvCacheOptions cacheOptions) where T : unmanaged
    {
        var p = inputs.Problem;
        using var q = CudaTensor<T>.FromHost(Tensor.Create(inputs.Q, p.QLengths));
        using var kCache = CudaTensor<T>.FromHost(Tensor.Create(inputs.KCache, p.CacheLengths));
        using var vCache = CudaTensor<T>.FromHost(Tensor.Create(inputs.VCache, p.CacheLengths));
        using var kNew = Upload(inputs.KNew, p.NewLengths);
        using var vNew = Upload(inputs.VNew, p.NewLengths);
        using var seqlens = Upload(p.CacheSeqlens, [p.Batch]);
        using var batchIndex = Upload(inputs.BatchIndex, [p.Batch]);
        using var blockTable = Upload(inputs.BlockTable, [p.Batch, p.MaxBlocks]);
        using var cos = Upload(inputs.RotaryCos, p.RotaryLengths);
        using var sin = Upload(inputs.RotarySin, p.RotaryLengths);
        using var output = CudaTensor<T>.Allocate(p.QLengths);
        using var lse = CudaTensor<float>.Allocate([p.Batch, p.HeadsQ, p.SeqlenQ]);
        output.Fill(0xFF);
        lse.Fill(0xFF);
        FlashAttention.ForwardWithKvCacheInto(q, kCache, vCache, output, lse, kNew, vNew, seqlens, batchIndex, blockTable, cos, sin, options, cacheOptions);
        var o = output.ToHost();
        var l = lse.ToHost();
        return new KvCacheOutcome<T>(KvCacheCheck.Flatten(o), KvCacheCheck.Flatten(l), KvCacheCheck.Flatten(kCache.ToHost()),
            KvCacheCheck.Flatten(vCache.ToHost()), o.Lengths.ToArray(), l.Lengths.ToArray());
    }

    private static CudaTensor<TE>? Upload<TE>(TE[]? values, nint[] lengths) where TE : unmanaged =>
        values is null ? null : CudaTensor<TE>.FromHost(Tensor.Create(values, lengths));
}
