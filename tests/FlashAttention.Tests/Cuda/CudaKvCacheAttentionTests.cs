using System.Numerics.Tensors;
using FlashAttn.Cuda;
using FlashAttn.Reference;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The split-KV decode kernels (flash_attn_with_kvcache's attention) on contiguous caches, against the float64 reference of
/// plain attention: without cache lengths a KV-cache call is attention over the whole cache; with ragged lengths, sequence b
/// is attention over its first cache_seqlens[b] rows. Splits (forced and automatic), GQA packing of query heads into one
/// tile, several query rows, every score option and odd head dims are covered; outputs start poisoned (NaN).
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaKvCacheAttentionTests
{
    public static TheoryData<Dtype, int, int, int, int, int, int, string, int> WholeCacheCases => new()
    {
        // dtype, batch, seqlen_q, cache, heads_q, heads_kv, head dim, options, splits
        { Dtype.Bf16, 2, 1, 1000, 32, 8, 128, "plain", 0 },
        { Dtype.Fp16, 3, 1, 333, 8, 2, 64, "plain", 1 },
        { Dtype.Bf16, 1, 1, 2049, 4, 1, 256, "plain", 7 },          // MQA, 2 stages, splits over an odd tail
        { Dtype.Fp16, 2, 5, 700, 8, 2, 96, "causal", 0 },           // 20 packed rows: two row tiles
        { Dtype.Bf16, 2, 3, 517, 6, 3, 40, "window", 3 },
        { Dtype.Fp16, 1, 1, 900, 16, 4, 128, "softcap", 0 },
        { Dtype.Bf16, 2, 2, 450, 8, 4, 64, "alibi+causal", 5 },
        { Dtype.Fp16, 2, 1, 300, 4, 4, 256, "softcap+alibi", 2 },
        { Dtype.Bf16, 1, 17, 128, 2, 1, 64, "causal", 0 },          // more queries than keys in a block, causal
    };

    [Theory]
    [MemberData(nameof(WholeCacheCases))]
    public void WholeCacheIsAttentionOverTheCache(Dtype dtype, int batch, int seqlenQ, int cache, int headsQ, int headsKv, int headDim,
        string options, int splits)
    {
        GpuRequirement.SkipIfUnavailable();
        var problem = new Problem(batch, seqlenQ, cache, headsQ, headsKv, headDim);
        var random = new TestRandom();
        var attention = KvCacheCaseOptions.Parse(options, batch, headsQ, headDim, random);
        var cacheOptions = new KvCacheOptions { NumSplits = splits };
        if (dtype == Dtype.Fp16)
            AttentionCheck.Forward(problem, attention, inputs: Inputs<Half>.Create(problem, random), run: (inputs, o) => WholeCache(inputs, o, cacheOptions));
        else
            AttentionCheck.Forward(problem, attention, inputs: Inputs<BFloat16>.Create(problem, random), run: (inputs, o) => WholeCache(inputs, o, cacheOptions));
    }

    [Theory]
    [InlineData(Dtype.Bf16, 128, "plain", 0)]
    [InlineData(Dtype.Fp16, 64, "causal", 4)]
    [InlineData(Dtype.Bf16, 256, "window", 0)]
    [InlineData(Dtype.Fp16, 128, "softcap+alibi", 1)]
    public void RaggedCacheLengthsAttendOverEachSequencesKeys(Dtype dtype, int headDim, string options, int splits)
    {
        GpuRequirement.SkipIfUnavailable();
        if (dtype == Dtype.Fp16) Ragged<Half>(headDim, options, splits);
        else Ragged<BFloat16>(headDim, options, splits);
    }

    private static void Ragged<T>(int headDim, string optionText, int splits) where T : unmanaged
    {
        var random = new TestRandom();
        int[] lengths = [0, 1, 63, 64, 65, 777, 1500];   // empty (O = 0, LSE = +inf), block edges, long
        int batch = lengths.Length, seqlenQ = 2, capacity = 1536, headsQ = 8, headsKv = 2;
        var problem = new Problem(batch, seqlenQ, capacity, headsQ, headsKv, headDim);
        var inputs = Inputs<T>.Create(problem, random);
        var options = KvCacheCaseOptions.Parse(optionText, batch, headsQ, headDim, random);
        string context = $"{random} lengths=[{string.Join(",", lengths)}] splits={splits} {optionText} d={headDim} {Precision<T>.Name}";

        using var q = CudaTensor<T>.FromHost(inputs.QTensor);
        using var k = CudaTensor<T>.FromHost(inputs.KTensor);
        using var v = CudaTensor<T>.FromHost(inputs.VTensor);
        using var seqlens = CudaTensor<int>.FromHost(Tensor.Create(lengths, [batch]));
        using var output = CudaTensor<T>.Allocate(problem.QLengths);
        using var lse = CudaTensor<float>.Allocate(problem.LseLengths);
        output.Fill(0xFF);
        lse.Fill(0xFF);
        FlashAttention.ForwardWithKvCacheInto(q, k, v, output, lse, cacheSeqlens: seqlens, options: options,
            cacheOptions: new KvCacheOptions { NumSplits = splits });
        var o = Precision<T>.Flatten(output.ToHost());
        var l = Flat.Of(lse.ToHost());

        var qd = Precision<T>.ToDoubles(inputs.Q);
        var kd = Precision<T>.ToDoubles(inputs.K);
        var vd = Precision<T>.ToDoubles(inputs.V);
        int qRow = seqlenQ * headsQ * headDim, kvRow = capacity * headsKv * headDim;
        for (int b = 0; b < batch; b++)
        {
            var shape = new ReferenceShape(1, seqlenQ, lengths[b], headsQ, headsKv, headDim);
            var settings = ReferenceSettings.From(options, headDim, batch, headsQ) with { BatchOffset = b };
            double[] qb = qd[(b * qRow)..((b + 1) * qRow)];
            double[] kb = kd[(b * kvRow)..(b * kvRow + lengths[b] * headsKv * headDim)];
            double[] vb = vd[(b * kvRow)..(b * kvRow + lengths[b] * headsKv * headDim)];
            var ref64 = ReferenceAttention.Forward(shape, settings, qb, kb, vb);
            var naive = ReferenceAttention.Forward(shape, settings, Array.ConvertAll(qb, x => (float)x), Array.ConvertAll(kb, x => (float)x),
                Array.ConvertAll(vb, x => (float)x), Precision<T>.OperandRounding);
            double u = Precision<T>.FloorUnit;
            Tolerance.AssertClose($"O[{b}]", o.AsSpan(b * qRow, qRow), ref64.Output,
                Array.ConvertAll(naive.Output, x => (double)Precision<T>.ToFloat(Precision<T>.FromFloat(x))), u, context);
            Tolerance.AssertClose($"LSE[{b}]", l.AsSpan(b * headsQ * seqlenQ, headsQ * seqlenQ), ref64.LogSumExp, Flat.Widen(naive.LogSumExp), u, context);
        }
    }

    [Fact]
    public void HeadDimsThatAreNotMultiplesOfEightAreRejectedOnCuda()
    {
        GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([1, 1, 2, 36]);
        using var cache = CudaTensor<Half>.Allocate([1, 64, 2, 36]);
        var error = Assert.Throws<ArgumentException>(() => FlashAttention.ForwardWithKvCache(q, cache, cache).Dispose());
        Assert.Contains("multiple of 8", error.Message);
    }

    [Fact]
    public void DropoutAndPagedCacheBatchIndexAreRejectedBeforeAnyWork()
    {
        GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<BFloat16>.Allocate([2, 1, 4, 64]);
        using var cache = CudaTensor<BFloat16>.Allocate([4, 16, 2, 64]);
        using var table = CudaTensor<int>.Allocate([2, 3]);
        using var index = CudaTensor<int>.Allocate([2]);
        var dropout = Assert.Throws<ArgumentException>(() =>
            FlashAttention.ForwardWithKvCache(q, cache, cache, options: new AttentionOptions { DropoutProbability = 0.1f }).Dispose());
        Assert.Equal("options.DropoutProbability", dropout.ParamName);
        var paged = Assert.Throws<ArgumentException>(() =>
            FlashAttention.ForwardWithKvCache(q, cache, cache, blockTable: table, cacheBatchIndex: index).Dispose());
        Assert.Equal("cacheBatchIndex", paged.ParamName);
    }

    [Fact]
    public void MoreQueryRowsThanOneGridTakesAreRejectedBeforeAnyWork()
    {
        GpuRequirement.SkipIfUnavailable();
        // 131080 queries x 8 heads over 1 kv head = 65540 tiles of 16 rows: past CUDA's 65535 grid rows.
        using var q = CudaTensor<Half>.Allocate([1, 131080, 8, 64]);
        using var cache = CudaTensor<Half>.Allocate([1, 64, 1, 64]);
        var error = Assert.Throws<ArgumentException>(() => FlashAttention.ForwardWithKvCache(q, cache, cache).Dispose());
        Assert.Equal("q", error.ParamName);
        Assert.Contains("chunks", error.Message);
    }

    internal static AttentionResult<T> WholeCache<T>(Inputs<T> inputs, AttentionOptions options, KvCacheOptions cacheOptions) where T : unmanaged =>
        DeviceInputs.Uploaded(inputs, (q, k, v) =>
        {
            using var output = CudaTensor<T>.Allocate(inputs.Problem.QLengths, q.Device);
            using var lse = CudaTensor<float>.Allocate(inputs.Problem.LseLengths, q.Device);
            output.Fill(0xFF);
            lse.Fill(0xFF);
            FlashAttention.ForwardWithKvCacheInto(q, k, v, output, lse, options: options, cacheOptions: cacheOptions);
            return new AttentionResult<T>(output.ToHost(), lse.ToHost(), null, null);
        });
}

/// <summary>'+'-separated option names of the KV-cache tests: plain, causal, window, softcap, alibi (per-batch slopes).</summary>
internal static class KvCacheCaseOptions
{
    public static AttentionOptions Parse(string text, int batch, int headsQ, int headDim, TestRandom random)
    {
        var options = new AttentionOptions();
        foreach (var name in text.Split('+'))
            options = name switch
            {
                "plain" => options,
                "causal" => options with { Causal = true },
                "window" => options with { WindowLeft = 37, WindowRight = 5 },
                "softcap" => options with { Softcap = 4f, SoftmaxScale = 3f / MathF.Sqrt(headDim) },
                "alibi" => options with { AlibiSlopes = Tensor.Create(random.Uniform(batch * headsQ, 0.01f, 0.5f), [batch, headsQ]) },
                _ => throw new ArgumentException($"unknown option '{name}'", nameof(text)),
            };
        return options;
    }
}
