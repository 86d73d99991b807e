using FlashAttn.Tests.Infrastructure;
using FlashAttn.TorchSharp;
using TorchSharp;

namespace FlashAttn.Tests.TorchSharp;

/// <summary>The KV-cache geometries the adapter tests share (head dims multiples of 8, so CUDA runs them too).</summary>
internal static class TorchKvCacheCases
{
    public static readonly string[] Names =
        ["decode-gqa-append-rotary", "paged-block-table", "batch-index-window", "paged-seqlens-only-softcap", "whole-cache-alibi"];

    public static (KvCacheProblem Problem, AttentionOptions Options) Get(string name, TestRandom random) => name switch
    {
        // One new token per sequence (an empty cache among them, one appended into the last row), 8 query heads over 2 kv heads,
        // interleaved rotary on half the head dim.
        "decode-gqa-append-rotary" => (
            new KvCacheProblem
            {
                Batch = 3, HeadsQ = 8, HeadsKv = 2, HeadDim = 64, SeqlenCache = 48, CacheSeqlens = [0, 21, 47], Append = true, SeqlenNew = 1,
                RotaryDim = 32,
            },
            new AttentionOptions { Causal = true }),
        // Shuffled pages of 16, appends at the end of a page, into a fresh page and across a page boundary; unused block-table
        // entries hold invalid pages; NeoX rotary.
        "paged-block-table" => (
            new KvCacheProblem
            {
                Batch = 3, SeqlenQ = 2, HeadsQ = 4, HeadsKv = 1, HeadDim = 32, PageSize = 16, MaxBlocks = 4, SpareEntries = 3,
                CacheSeqlens = [14, 0, 31], Append = true, SeqlenNew = 2, RotaryDim = 16, RotaryInterleaved = false, PoisonUnusedPages = true,
            },
            new AttentionOptions { Causal = true }),
        // Sequences mapped to shuffled cache rows (cache_batch_idx); a window, not causal.
        "batch-index-window" => (
            new KvCacheProblem
            {
                Batch = 3, SeqlenQ = 3, HeadsQ = 4, HeadsKv = 4, HeadDim = 40, SeqlenCache = 30, SpareEntries = 2, BatchIndex = true,
                CacheSeqlens = [0, 12, 27], Append = true, SeqlenNew = 3, RotaryDim = 8,
            },
            new AttentionOptions { WindowLeft = 6, WindowRight = 1 }),
        // cache_seqlens without an append over a paged cache.
        "paged-seqlens-only-softcap" => (
            new KvCacheProblem
            {
                Batch = 2, SeqlenQ = 2, HeadsQ = 4, HeadsKv = 2, HeadDim = 64, PageSize = 8, MaxBlocks = 5, SpareEntries = 1,
                CacheSeqlens = [5, 33], PoisonUnusedPages = true,
            },
            new AttentionOptions { Causal = true, Softcap = 3f }),
        // Neither cache_seqlens nor an append: attention over the whole cache.
        "whole-cache-alibi" => (
            new KvCacheProblem { Batch = 2, SeqlenQ = 2, HeadsQ = 4, HeadsKv = 2, HeadDim = 32, SeqlenCache = 19, SpareEntries = 1 },
            new AttentionOptions { AlibiSlopes = Tensor.Create(random.Uniform(4, 0.05f, 0.5f), [4]) }),
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, null),
    };

    /// <summary>Runs case <paramref name="name"/> through <see cref="KvCacheCheck"/> with the adapter on <paramref name="device"/>.</summary>
    public static void Check(string name, Dtype dtype, torch.Device device, bool packedCache = false, int splits = 0)
    {
        var random = new TestRandom();
        var (problem, options) = Get(name, random);
        switch (dtype)
        {
            case Dtype.Fp32:
                KvCacheCheck.Run(problem, options, KvCacheInputs<float>.Create(problem, random),
                    (i, o, c) => TorchKvCacheRun.Run(i, o, c with { NumSplits = splits }, device, packedCache));
                break;
            case Dtype.Fp16:
                KvCacheCheck.Run(problem, options, KvCacheInputs<Half>.Create(problem, random),
                    (i, o, c) => TorchKvCacheRun.Run(i, o, c with { NumSplits = splits }, device, packedCache));
                break;
            default:
                KvCacheCheck.Run(problem, options, KvCacheInputs<BFloat16>.Create(problem, random),
                    (i, o, c) => TorchKvCacheRun.Run(i, o, c with { NumSplits = splits }, device, packedCache));
                break;
        }
    }
}

/// <summary>The adapter as a <see cref="KvCacheCheck"/> execution path: the inputs as torch tensors, the caches read back after the call.</summary>
internal static class TorchKvCacheRun
{
    /// <param name="inputs">The problem's inputs; the caches are copied into new torch tensors, so they stay as they were.</param>
    /// <param name="options">Attention options.</param>
    /// <param name="cacheOptions">Rotary layout and splits.</param>
    /// <param name="device">Where the tensors live.</param>
    /// <param name="packedCache">Hold both caches in one (blocks, rows, 2, heads_kv, headdim) buffer and pass its two slices: strided
    /// views the append must write through in place.</param>
    public static KvCacheOutcome<T> Run<T>(KvCacheInputs<T> inputs, AttentionOptions options, KvCacheOptions cacheOptions, torch.Device device,
        bool packedCache = false) where T : unmanaged
    {
        using var scope = torch.NewDisposeScope();
        var p = inputs.Problem;
        var dtype = ScalarType<T>();
        torch.Tensor Values(T[] values, nint[] lengths) => torch.tensor(Precision<T>.ToFloats(values), Shape(lengths)).to(dtype, device);
        torch.Tensor? Optional(T[]? values, nint[] lengths) => values is null ? null : Values(values, lengths);
        torch.Tensor? Ints(int[]? values, nint[] lengths) => values is null ? null : torch.tensor(values, Shape(lengths)).to(device);

        torch.Tensor kCache, vCache;
        if (packedCache)
        {
            var kv = torch.stack([Values(inputs.KCache, p.CacheLengths), Values(inputs.VCache, p.CacheLengths)], 2);
            kCache = kv.select(2, 0);
            vCache = kv.select(2, 1);
            Assert.False(kCache.is_contiguous());
        }
        else
        {
            kCache = Values(inputs.KCache, p.CacheLengths);
            vCache = Values(inputs.VCache, p.CacheLengths);
        }
        var (output, lse) = FlashAttentionTorch.AttentionWithKvCacheAndLse(Values(inputs.Q, p.QLengths), kCache, vCache,
            Optional(inputs.KNew, p.NewLengths), Optional(inputs.VNew, p.NewLengths), Optional(inputs.RotaryCos, p.RotaryLengths),
            Optional(inputs.RotarySin, p.RotaryLengths), Ints(p.CacheSeqlens, [p.Batch]), Ints(inputs.BatchIndex, [p.Batch]),
            Ints(inputs.BlockTable, [p.Batch, p.MaxBlocks]), options, cacheOptions);

        Assert.Equal(dtype, output.dtype);
        Assert.Equal(device.type, output.device_type);
        Assert.Equal(torch.ScalarType.Float32, lse.dtype);
        Assert.Equal(device.type, lse.device_type);
        Assert.Equal(new long[] { p.Batch, p.HeadsQ, p.SeqlenQ }, lse.shape);
        Assert.False(output.requires_grad);
        Assert.False(lse.requires_grad);
        // The caches are read back from the caller's tensors: the append must have landed there.
        return new KvCacheOutcome<T>(Elements<T>(output), Array.ConvertAll(TorchTest.Values(lse), x => (float)x), Elements<T>(kCache),
            Elements<T>(vCache), Lengths(output), Lengths(lse));
    }

    public static torch.ScalarType ScalarType<T>() =>
        typeof(T) == typeof(float) ? torch.ScalarType.Float32 : typeof(T) == typeof(Half) ? torch.ScalarType.Float16 : torch.ScalarType.BFloat16;

    /// <summary>The tensor's elements in row-major order as <typeparamref name="T"/> (exact: they are values of T).</summary>
    public static T[] Elements<T>(torch.Tensor tensor) where T : unmanaged =>
        Array.ConvertAll(TorchTest.Values(tensor), x => Precision<T>.FromFloat((float)x));

    public static long[] Shape(nint[] lengths) => Array.ConvertAll(lengths, x => (long)x);

    private static nint[] Lengths(torch.Tensor tensor) => Array.ConvertAll(tensor.shape, x => (nint)x);
}

/// <summary>
/// flash-attn's <c>flash_attn_with_kvcache</c> through the TorchSharp adapter on CPU tensors (float32 and bfloat16):
/// O, LSE and both caches after the in-place append against the float64 reference (<see cref="KvCacheCheck"/>), bit for bit
/// against the core API on the same inputs, caches that are strided views, no autograd node, and argument validation (nothing
/// written to the caches on rejection). Skipped where TorchSharp's native libraries cannot load.
/// </summary>
[Trait("Category", "TorchSharp")]
[Collection(TorchSharpCollection.Name)]
public sealed class TorchKvCacheTests
{
    public static TheoryData<string, Dtype> Cases()
    {
        var data = new TheoryData<string, Dtype>();
        foreach (string name in TorchKvCacheCases.Names)
        {
            data.Add(name, Dtype.Fp32);
            data.Add(name, Dtype.Bf16);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesReference(string name, Dtype dtype)
    {
        TorchSharpRequirement.SkipIfUnavailable();
        TorchKvCacheCases.Check(name, dtype, torch.CPU);
    }

    /// <summary>Both caches as slices of one packed buffer (not contiguous): read and appended to through their strides.</summary>
    [Theory]
    [InlineData("decode-gqa-append-rotary", Dtype.Fp32)]
    [InlineData("paged-block-table", Dtype.Bf16)]
    public void CachesThatAreStridedViewsAreWrittenInPlace(string name, Dtype dtype)
    {
        TorchSharpRequirement.SkipIfUnavailable();
        TorchKvCacheCases.Check(name, dtype, torch.CPU, packedCache: true);
    }

    /// <summary>On CPU tensors the adapter is the core's <c>ForwardWithKvCache</c> over the same memory: O, LSE and caches bit for bit.</summary>
    [Theory]
    [InlineData("paged-block-table")]
    [InlineData("batch-index-window")]
    public void EqualsTheCoreApiBitForBit(string name)
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        var (problem, options) = TorchKvCacheCases.Get(name, random);
        var inputs = KvCacheInputs<BFloat16>.Create(problem, random);
        var cacheOptions = new KvCacheOptions { RotaryInterleaved = problem.RotaryInterleaved };
        var core = KvCacheCheck.RunCpu(inputs, options, cacheOptions);
        var adapter = TorchKvCacheRun.Run(inputs, options, cacheOptions, torch.CPU);
        string context = $"[{problem} {random}]";
        Tolerance.AssertIdentical("O", Precision<BFloat16>.ToDoubles(adapter.Output), Precision<BFloat16>.ToDoubles(core.Output), context);
        Tolerance.AssertIdentical("LSE", adapter.LogSumExp, core.LogSumExp, context);
        Tolerance.AssertIdentical("kCache", Precision<BFloat16>.ToDoubles(adapter.KCache), Precision<BFloat16>.ToDoubles(core.KCache), context);
        Tolerance.AssertIdentical("vCache", Precision<BFloat16>.ToDoubles(adapter.VCache), Precision<BFloat16>.ToDoubles(core.VCache), context);
        Assert.Equal(core.LseLengths, adapter.LseLengths);
    }

    /// <summary>The output-only form gives the WithLse form's output; the LSE is (batch, heads_q, seqlen_q) fp32.</summary>
    [Fact]
    public void OutputOnlyFormEqualsTheLseForm()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        var q = TorchTest.Normal(random, [2, 3, 4, 16]);
        var kCache = TorchTest.Normal(random, [2, 10, 2, 16]);
        var vCache = TorchTest.Normal(random, [2, 10, 2, 16]);
        var k = TorchTest.Normal(random, [2, 3, 2, 16]);
        var v = TorchTest.Normal(random, [2, 3, 2, 16]);
        var seqlens = torch.tensor(new[] { 2, 7 });
        var options = new AttentionOptions { Causal = true };
        var (output, lse) = FlashAttentionTorch.AttentionWithKvCacheAndLse(q, kCache.clone(), vCache.clone(), k, v, cacheSeqlens: seqlens,
            options: options);
        var alone = FlashAttentionTorch.AttentionWithKvCache(q, kCache.clone(), vCache.clone(), k, v, cacheSeqlens: seqlens, options: options);
        Assert.Equal(new long[] { 2, 4, 3 }, lse.shape);
        Assert.Equal(torch.ScalarType.Float32, lse.dtype);
        Assert.Equal(q.shape, alone.shape);
        Assert.True(alone.equal(output).all().item<bool>(), $"the output-only form differs from the WithLse form (seed {random.Seed})");
        TorchTest.AssertFinite("lse", lse);
    }

    /// <summary>Inference only: inputs that require grad give results that do not, and a cache that autograd tracks can be read.</summary>
    [Fact]
    public void NoAutogradNodeIsRecorded()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        var q = TorchTest.Normal(random, [1, 2, 2, 16]).requires_grad_(true);
        var k = TorchTest.Normal(random, [1, 1, 2, 16]).requires_grad_(true);
        var v = TorchTest.Normal(random, [1, 1, 2, 16]).requires_grad_(true);
        var kCache = torch.zeros(1, 8, 2, 16);
        var vCache = torch.zeros(1, 8, 2, 16);
        var (output, lse) = FlashAttentionTorch.AttentionWithKvCacheAndLse(q, kCache, vCache, k, v, cacheSeqlens: torch.tensor(new[] { 3 }));
        Assert.False(output.requires_grad);
        Assert.False(lse.requires_grad);
        Assert.False(kCache.requires_grad);
        // The new key landed at position 3 of the caller's cache tensor.
        Assert.True(kCache.select(1, 3).equal(k.select(1, 0)).all().item<bool>(), "k was not appended in place");

        var tracked = TorchTest.Normal(random, [1, 8, 2, 16]).requires_grad_(true);
        Assert.False(FlashAttentionTorch.AttentionWithKvCache(q, tracked, tracked).requires_grad);
    }

    [Fact]
    public void EmptyBatchGivesEmptyResults()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var cache = torch.zeros(2, 8, 2, 16);
        var (output, lse) = FlashAttentionTorch.AttentionWithKvCacheAndLse(torch.empty(0, 1, 4, 16), cache, cache.clone());
        Assert.Equal(new long[] { 0, 1, 4, 16 }, output.shape);
        Assert.Equal(new long[] { 0, 4, 1 }, lse.shape);
    }

    [Fact]
    public void IndexTensorsMustBeInt32()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var inputs = Small();
        var (q, kCache, vCache, k, v) = (inputs.Q, inputs.KCache, inputs.VCache, inputs.K, inputs.V);
        var seqlens = torch.tensor(new[] { 2, 5 });
        var e = Assert.Throws<ArgumentException>(() =>
            FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k, v, cacheSeqlens: seqlens.to(torch.ScalarType.Int64)));
        Assert.Equal("cacheSeqlens", e.ParamName);
        Assert.Contains("int32", e.Message);
        Assert.Equal("cacheBatchIndex", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k, v,
            cacheSeqlens: seqlens, cacheBatchIndex: torch.tensor(new[] { 1f, 0f }))).ParamName);
        Assert.Equal("blockTable", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k, v,
            cacheSeqlens: seqlens, blockTable: torch.zeros([2, 1], torch.ScalarType.Int64))).ParamName);
        inputs.AssertCachesUnchanged();
    }

    [Fact]
    public void TensorsMustHaveQsDtype()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var inputs = Small();
        var (q, kCache, vCache, k, v) = (inputs.Q, inputs.KCache, inputs.VCache, inputs.K, inputs.V);
        var seqlens = torch.tensor(new[] { 2, 5 });
        Assert.Equal("kCache", Assert.Throws<ArgumentException>(() =>
            FlashAttentionTorch.AttentionWithKvCache(q, kCache.to(torch.ScalarType.Float64), vCache)).ParamName);
        Assert.Equal("v", Assert.Throws<ArgumentException>(() =>
            FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k, v.to(torch.ScalarType.BFloat16), cacheSeqlens: seqlens)).ParamName);
        var cos = torch.ones([8, 4], torch.ScalarType.Float16);
        Assert.Equal("rotaryCos", Assert.Throws<ArgumentException>(() =>
            FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k, v, cos, cos, seqlens)).ParamName);
        var f64 = q.to(torch.ScalarType.Float64);
        var e = Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(f64, f64, f64));
        Assert.Equal("q", e.ParamName);
        Assert.Contains("float32, float16 and bfloat16", e.Message);
        Assert.Throws<ArgumentNullException>(() => FlashAttentionTorch.AttentionWithKvCache(q, null!, vCache));
        inputs.AssertCachesUnchanged();
    }

    /// <summary>Shape errors found by the core name the adapter's arguments (k and v, not the core's kNew and vNew).</summary>
    [Fact]
    public void ShapeErrorsNameTheArgument()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var inputs = Small();
        var (q, kCache, vCache, k, v) = (inputs.Q, inputs.KCache, inputs.VCache, inputs.K, inputs.V);
        var seqlens = torch.tensor(new[] { 2, 5 });
        Assert.Equal("k", Assert.Throws<ArgumentException>(() =>
            FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k.narrow(0, 0, 1), v.narrow(0, 0, 1), cacheSeqlens: seqlens)).ParamName);
        var missing = Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k, cacheSeqlens: seqlens));
        Assert.Equal("v", missing.ParamName);
        Assert.DoesNotContain("vNew", missing.Message, StringComparison.Ordinal);
        Assert.Equal("cacheSeqlens", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k, v)).ParamName);
        Assert.Equal("cacheSeqlens", Assert.Throws<ArgumentException>(() =>
            FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k, v, cacheSeqlens: torch.tensor(new[] { 2 }))).ParamName);
        Assert.Equal("q", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q.select(1, 0), kCache, vCache)).ParamName);
        Assert.Equal("kCache", Assert.Throws<ArgumentException>(() =>
            FlashAttentionTorch.AttentionWithKvCache(q, kCache.narrow(3, 0, 8), vCache.narrow(3, 0, 8))).ParamName);
        Assert.StartsWith("options", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache,
            options: new AttentionOptions { DropoutProbability = 0.1f })).ParamName);
        inputs.AssertCachesUnchanged();
    }

    /// <summary>CPU index values are checked before anything is written: a length past the capacity or a page outside the cache
    /// is refused and the caches keep their contents.</summary>
    [Fact]
    public void BadIndexValuesLeaveTheCachesUnchanged()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var inputs = Small();
        var (q, kCache, vCache, k, v) = (inputs.Q, inputs.KCache, inputs.VCache, inputs.K, inputs.V);
        // Capacity 8, one new key: lengths up to 7.
        Assert.Equal("cacheSeqlens", Assert.Throws<ArgumentException>(() =>
            FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k, v, cacheSeqlens: torch.tensor(new[] { 2, 8 }))).ParamName);
        Assert.Equal("cacheBatchIndex", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k, v,
            cacheSeqlens: torch.tensor(new[] { 2, 5 }), cacheBatchIndex: torch.tensor(new[] { 0, 2 }))).ParamName);
        // The same caches as pages of 8 rows: sequence 1 uses page entry 0, which points outside the two pages.
        Assert.Equal("blockTable", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k, v,
            cacheSeqlens: torch.tensor(new[] { 2, 5 }), blockTable: torch.tensor(new[] { 1, 2 }, [2, 1]))).ParamName);
        inputs.AssertCachesUnchanged();
    }

    /// <summary>A cache the kernels cannot address in place is refused rather than copied (the append would be lost in a copy),
    /// and so is a cache that autograd tracks when appending.</summary>
    [Fact]
    public void CachesThatCannotBeWrittenInPlaceAreRefused()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var inputs = Small();
        var (q, kCache, vCache, k, v) = (inputs.Q, inputs.KCache, inputs.VCache, inputs.K, inputs.V);
        var seqlens = torch.tensor(new[] { 2, 5 });
        var transposed = kCache.transpose(2, 3).contiguous().transpose(2, 3);   // same values, headdim stride 2
        var e = Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q, transposed, vCache, k, v, cacheSeqlens: seqlens));
        Assert.Equal("kCache", e.ParamName);
        Assert.Contains("in place", e.Message);
        var broadcast = vCache.narrow(0, 0, 1).expand(2, 8, 2, 16);
        Assert.Equal("vCache", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q, kCache, broadcast)).ParamName);
        var tracked = kCache.clone().requires_grad_(true);
        Assert.Equal("kCache", Assert.Throws<ArgumentException>(() =>
            FlashAttentionTorch.AttentionWithKvCache(q, tracked, vCache, k, v, cacheSeqlens: seqlens)).ParamName);
        inputs.AssertCachesUnchanged();
    }

    /// <summary>q (2, 1, 4, 16), caches (2, 8, 2, 16) with values, k and v (2, 1, 2, 16); float32 on the CPU.</summary>
    private static SmallInputs Small()
    {
        var random = new TestRandom();
        var kCache = TorchTest.Normal(random, [2, 8, 2, 16]);
        var vCache = TorchTest.Normal(random, [2, 8, 2, 16]);
        return new SmallInputs(TorchTest.Normal(random, [2, 1, 4, 16]), kCache, vCache, TorchTest.Normal(random, [2, 1, 2, 16]),
            TorchTest.Normal(random, [2, 1, 2, 16]), kCache.clone(), vCache.clone());
    }

    /// <summary>Inputs for the validation cases, with copies of the caches as they were.</summary>
    private sealed record SmallInputs(torch.Tensor Q, torch.Tensor KCache, torch.Tensor VCache, torch.Tensor K, torch.Tensor V,
        torch.Tensor KCacheBefore, torch.Tensor VCacheBefore)
    {
        public void AssertCachesUnchanged()
        {
            Assert.True(KCache.equal(KCacheBefore).all().item<bool>(), "a rejected call wrote to kCache");
            Assert.True(VCache.equal(VCacheBefore).all().item<bool>(), "a rejected call wrote to vCache");
        }
    }
}

/// <summary>
/// The KV-cache adapter on CUDA tensors (fp16/bf16, the core's split-KV kernels writing into torch-allocated O and LSE on the
/// legacy default stream, index tensors on the device): the shared cases through <see cref="KvCacheCheck"/>, caches as strided
/// views, a decode loop whose cache lengths torch advances on the device between steps, and device and dtype errors. Skipped
/// unless TorchSharp loads, torch sees a CUDA device and our CUDA path can use it.
/// </summary>
[Trait("Category", "TorchSharp")]
[Trait("Category", "Cuda")]
[Collection(TorchSharpCollection.Name)]
public sealed class TorchKvCacheCudaTests
{
    public static TheoryData<string, Dtype, int> Cases()
    {
        var data = new TheoryData<string, Dtype, int>();
        foreach (string name in TorchKvCacheCases.Names)
        {
            data.Add(name, Dtype.Bf16, 0);
            data.Add(name, Dtype.Fp16, 0);
        }
        data.Add("decode-gqa-append-rotary", Dtype.Bf16, 1);
        data.Add("paged-block-table", Dtype.Fp16, 4);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesReference(string name, Dtype dtype, int splits)
    {
        TorchSharpRequirement.SkipIfNoCuda();
        TorchKvCacheCases.Check(name, dtype, torch.CUDA, splits: splits);
    }

    [Theory]
    [InlineData("decode-gqa-append-rotary", Dtype.Fp16)]
    [InlineData("paged-block-table", Dtype.Bf16)]
    public void CachesThatAreStridedViewsAreWrittenInPlace(string name, Dtype dtype)
    {
        TorchSharpRequirement.SkipIfNoCuda();
        TorchKvCacheCases.Check(name, dtype, torch.CUDA, packedCache: true);
    }

    /// <summary>
    /// Four decode steps, torch advancing cache_seqlens in place on the device between them (ordered with our kernels by the
    /// shared legacy stream, never read back): every step's output and the final caches against the same loop on the CPU
    /// (float32 the reference, the precision under test the naive baseline).
    /// </summary>
    [Theory]
    [InlineData(torch.ScalarType.BFloat16)]
    [InlineData(torch.ScalarType.Float16)]
    public void DecodeLoopWithDeviceSideLengthsMatchesTheCpuPath(torch.ScalarType dtype)
    {
        TorchSharpRequirement.SkipIfNoCuda();
        using var scope = torch.NewDisposeScope();
        var random = new TestRandom();
        torch.Tensor Rounded(long[] shape) => TorchTest.Normal(random, shape).to(dtype).to(torch.ScalarType.Float32);
        const int steps = 4;
        var q = Rounded([steps, 2, 1, 8, 64]);
        var k = Rounded([steps, 2, 1, 2, 64]);
        var v = Rounded([steps, 2, 1, 2, 64]);
        var kCache = Rounded([2, 32, 2, 64]);
        var vCache = Rounded([2, 32, 2, 64]);
        int[] start = [3, 17];

        (torch.Tensor Outputs, torch.Tensor KCache, torch.Tensor VCache) Loop(torch.ScalarType type, torch.Device device)
        {
            var kc = kCache.to(type, device).clone();
            var vc = vCache.to(type, device).clone();
            var seqlens = torch.tensor(start).to(device);
            var outputs = new List<torch.Tensor>();
            for (int s = 0; s < steps; s++)
            {
                outputs.Add(FlashAttentionTorch.AttentionWithKvCache(q.select(0, s).to(type, device), kc, vc, k.select(0, s).to(type, device),
                    v.select(0, s).to(type, device), cacheSeqlens: seqlens, options: new AttentionOptions { Causal = true }));
                seqlens.add_(1);
            }
            return (torch.stack(outputs), kc, vc);
        }

        var actual = Loop(dtype, torch.CUDA);
        var reference = Loop(torch.ScalarType.Float32, torch.CPU);
        var naive = Loop(dtype, torch.CPU);
        string context = $"[{dtype}, seed {random.Seed}]";
        double floor = TorchAttentionCheck.FloorUnit(dtype);
        Tolerance.AssertClose("outputs", TorchTest.Values(actual.Outputs), TorchTest.Values(reference.Outputs), TorchTest.Values(naive.Outputs), floor,
            context);
        Tolerance.AssertIdentical("kCache", TorchTest.Values(actual.KCache), TorchTest.Values(reference.KCache), context);
        Tolerance.AssertIdentical("vCache", TorchTest.Values(actual.VCache), TorchTest.Values(reference.VCache), context);
    }

    [Fact]
    public void BadArgumentsNameTheArgument()
    {
        TorchSharpRequirement.SkipIfNoCuda();
        using var scope = torch.NewDisposeScope();
        var q = torch.randn([2, 1, 4, 64], torch.ScalarType.BFloat16, torch.CUDA);
        var kCache = torch.zeros([2, 16, 2, 64], torch.ScalarType.BFloat16, torch.CUDA);
        var vCache = torch.zeros([2, 16, 2, 64], torch.ScalarType.BFloat16, torch.CUDA);
        var k = torch.randn([2, 1, 2, 64], torch.ScalarType.BFloat16, torch.CUDA);
        var seqlens = torch.tensor(new[] { 2, 5 });

        var e = Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache, k, k, cacheSeqlens: seqlens));
        Assert.Equal("cacheSeqlens", e.ParamName);
        Assert.Contains("device", e.Message);
        Assert.Equal("kCache", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q, kCache.cpu(), vCache)).ParamName);
        Assert.Equal("blockTable", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionWithKvCache(q, kCache, vCache,
            blockTable: torch.zeros([2, 1], torch.ScalarType.Int64, torch.CUDA))).ParamName);
        var f32 = q.to(torch.ScalarType.Float32);
        Assert.Contains("fp16/bf16", Assert.Throws<NotSupportedException>(() =>
            FlashAttentionTorch.AttentionWithKvCache(f32, kCache.to(torch.ScalarType.Float32), vCache.to(torch.ScalarType.Float32))).Message);
        Assert.True(kCache.eq(0).all().item<bool>(), "a rejected call wrote to kCache");
    }
}
