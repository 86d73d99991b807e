using System.Numerics.Tensors;
using FlashAttn.Reference;

namespace FlashAttn.Cli.Check;

/// <summary>
/// `flash-attn check`'s KV-cache cases (flash_attn_with_kvcache): a paged cache with a shuffled block table, ragged lengths
/// (one empty), new keys appended across a page boundary, interleaved rotary on q and the new keys, GQA, causal. The output,
/// the LSE and the key cache after the append are compared with the float64 reference (<see cref="ReferenceKvCache"/>) by
/// the same rule as the attention cases.
/// </summary>
internal static class KvCacheCheckRunner
{
    private const int PageSize = 16, MaxBlocks = 8, SpareBlocks = 3, RotaryDim = 32;
    private static readonly int[] CacheSeqlens = [0, 47, 100];

    /// <summary>Decode (one query per sequence, one new key) and a short prefill (4 of each), at every element type.</summary>
    public static IReadOnlyList<CheckCase> Cases() =>
    [
        .. Enum.GetValues<ElementType>().SelectMany(type => new[]
        {
            new CheckCase("kv-cache decode", type, new ReferenceShape(CacheSeqlens.Length, 1, MaxBlocks * PageSize, 8, 2, 64), new() { Causal = true }),
            new CheckCase("kv-cache prefill", type, new ReferenceShape(CacheSeqlens.Length, 4, MaxBlocks * PageSize, 8, 2, 64), new() { Causal = true }),
        }),
    ];

    public static CheckResult Run(IExecutionPath path, CheckCase c, Random rng, CancellationToken ct) => c.DType switch
    {
        ElementType.Fp32 => Run<float>(path, c, rng, ct),
        ElementType.Fp16 => Run<Half>(path, c, rng, ct),
        _ => Run<BFloat16>(path, c, rng, ct),
    };

    private static CheckResult Run<T>(IExecutionPath path, CheckCase c, Random rng, CancellationToken ct) where T : unmanaged
    {
        var s = c.Shape;
        var type = c.DType;
        int batch = s.Batch, seqlenNew = s.SeqlenQ, blocks = batch * MaxBlocks + SpareBlocks;
        nint[] qShape = [batch, s.SeqlenQ, s.HeadsQ, s.HeadDim], cacheShape = [blocks, PageSize, s.HeadsKv, s.HeadDim];
        nint[] newShape = [batch, seqlenNew, s.HeadsKv, s.HeadDim], rotaryShape = [s.SeqlenK, RotaryDim / 2];
        double[] q = Normal(rng, qShape, type), kCache = Normal(rng, cacheShape, type), vCache = Normal(rng, cacheShape, type);
        double[] kNew = Normal(rng, newShape, type), vNew = Normal(rng, newShape, type);
        var angles = Enumerable.Range(0, s.SeqlenK * RotaryDim / 2).Select(_ => 2 * Math.PI * rng.NextDouble()).ToArray();
        double[] cos = [.. angles.Select(a => type.Round(Math.Cos(a)))], sin = [.. angles.Select(a => type.Round(Math.Sin(a)))];
        int[] pages = [.. Enumerable.Range(0, blocks)];
        rng.Shuffle(pages);
        int[] table = pages[..(batch * MaxBlocks)];

        var kCacheT = CheckRunner.Create<T>(kCache, cacheShape);
        var vCacheT = CheckRunner.Create<T>(vCache, cacheShape);
        AttentionResult<T> result;
        try
        {
            result = path.ForwardWithKvCache(CheckRunner.Create<T>(q, qShape), kCacheT, vCacheT, CheckRunner.Create<T>(kNew, newShape), CheckRunner.Create<T>(vNew, newShape),
                CacheSeqlens, Tensor.Create(table, [batch, MaxBlocks]), CheckRunner.Create<T>(cos, rotaryShape), CheckRunner.Create<T>(sin, rotaryShape), c.Options, ct);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            return new(c, "fwd", path.Name, [], ex.Message);
        }

        ReferenceKvCacheProblem<TReal> Problem<TReal>(Func<double[], TReal[]> convert) => new()
        {
            Batch = batch, SeqlenQ = s.SeqlenQ, HeadsQ = s.HeadsQ, HeadsKv = s.HeadsKv, HeadDim = s.HeadDim,
            Q = convert(q), KCache = convert(kCache), VCache = convert(vCache), CacheBlocks = blocks, CacheRows = PageSize,
            KNew = convert(kNew), VNew = convert(vNew), SeqlenNew = seqlenNew, CacheSeqlens = CacheSeqlens, BlockTable = table, MaxBlocks = MaxBlocks,
            RotaryCos = convert(cos), RotarySin = convert(sin), RotaryPositions = s.SeqlenK, RotaryInterleaved = true,
        };
        var settings = ReferenceSettings.From(c.Options, s.HeadDim, batch, s.HeadsQ);
        var ref64 = ReferenceKvCache.Forward(Problem(x => x), settings);
        var naive = ReferenceKvCache.Forward(Problem(x => Array.ConvertAll(x, v => (float)v)), settings, x => (float)type.Round(x));
        double floor = type.ToleranceFloorUnit();
        return new(c, "fwd", path.Name,
        [
            TensorCheck.Compare("O", CheckRunner.Doubles(result.Output), ref64.Output, Rounded(naive.Output, type), floor),
            TensorCheck.Compare("LSE", CheckRunner.Doubles(result.LogSumExp), ref64.LogSumExp, Array.ConvertAll(naive.LogSumExp, x => (double)x), floor),
            TensorCheck.Compare("kCache", CheckRunner.Doubles(kCacheT), ref64.KCache, Array.ConvertAll(naive.KCache, x => (double)x), floor),
        ]);
    }

    private static double[] Normal(Random rng, nint[] shape, ElementType type)
    {
        long count = shape.Aggregate(1L, (a, b) => a * b);
        var values = new double[count];
        for (long i = 0; i < count; i++)
            values[i] = type.Round(Math.Sqrt(-2 * Math.Log(1.0 - rng.NextDouble())) * Math.Cos(2 * Math.PI * rng.NextDouble()));
        return values;
    }

    private static double[] Rounded(float[] values, ElementType type) => Array.ConvertAll(values, x => type.Round(x));
}
