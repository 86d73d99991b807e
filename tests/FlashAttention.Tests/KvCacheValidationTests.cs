using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>
/// Bad arguments of the CPU <c>FlashAttention.ForwardWithKvCache</c> are rejected with an ArgumentException naming the argument,
/// and the cache is left exactly as it was, including when the bad value belongs to a later sequence than valid appends.
/// </summary>
public sealed class KvCacheValidationTests
{
    private const int Batch = 2, SeqlenQ = 2, HeadsQ = 4, HeadsKv = 2, D = 8, SeqlenCache = 10, SeqlenNew = 2, Page = 4, Blocks = 3;

    /// <summary>The arguments of one call; tensors are created fresh per case so every case starts from a known cache.</summary>
    private sealed record Call
    {
        public required Tensor<float> Q { get; init; }
        public required Tensor<float> KCache { get; init; }
        public required Tensor<float> VCache { get; init; }
        public Tensor<float>? KNew { get; init; }
        public Tensor<float>? VNew { get; init; }
        public int[]? Seqlens { get; init; }
        public int[]? BatchIndex { get; init; }
        public Tensor<int>? BlockTable { get; init; }
        public Tensor<float>? Cos { get; init; }
        public Tensor<float>? Sin { get; init; }
        public AttentionOptions Options { get; init; } = AttentionOptions.Default;
        public KvCacheOptions CacheOptions { get; init; } = KvCacheOptions.Default;

        public void Run() => FlashAttention.ForwardWithKvCache<float>(Q, KCache, VCache, Span(KNew), Span(VNew), Seqlens, BatchIndex, Span(BlockTable),
            Span(Cos), Span(Sin), Options, CacheOptions, TestContext.Current.CancellationToken);

        private static ReadOnlyTensorSpan<T> Span<T>(Tensor<T>? t) => t is null ? default : t.AsReadOnlyTensorSpan();
    }

    private static Tensor<float> Make(params nint[] lengths)
    {
        long count = 1;
        foreach (var n in lengths) count *= n;
        return Tensor.Create(new TestRandom().Normal(count), lengths);
    }

    /// <summary>A valid contiguous call with an append and rotary.</summary>
    private static Call Contiguous() => new()
    {
        Q = Make(Batch, SeqlenQ, HeadsQ, D),
        KCache = Make(Batch, SeqlenCache, HeadsKv, D),
        VCache = Make(Batch, SeqlenCache, HeadsKv, D),
        KNew = Make(Batch, SeqlenNew, HeadsKv, D),
        VNew = Make(Batch, SeqlenNew, HeadsKv, D),
        Seqlens = [3, 8],
        Cos = Make(SeqlenCache, D / 4),
        Sin = Make(SeqlenCache, D / 4),
        Options = new AttentionOptions { Causal = true },
    };

    /// <summary>A valid paged call: 3 pages of 4 per sequence out of 7, sequence 1's append crossing into its third page.</summary>
    private static Call Paged() => Contiguous() with
    {
        KCache = Make(7, Page, HeadsKv, D),
        VCache = Make(7, Page, HeadsKv, D),
        BlockTable = Tensor.Create(new[] { 6, 2, 0, 5, 1, 3 }, [Batch, Blocks]),
        Seqlens = [1, 7],
        Cos = Make(Page * Blocks, D / 4),
        Sin = Make(Page * Blocks, D / 4),
    };

    public static TheoryData<string> Cases() => new(
        "q-rank", "vcache-shape", "cache-batch-too-small", "knew-heads", "vnew-missing", "seqlens-missing", "seqlens-length", "seqlens-negative",
        "seqlens-past-capacity", "batch-index-range", "batch-index-with-pages", "block-table-rows", "block-table-entry", "block-table-negative",
        "rotary-without-append", "sin-missing", "rotary-dim", "rotary-positions", "dropout", "probabilities", "splits", "alibi-shape");

    private static (string Param, Call Call) Case(string name) => name switch
    {
        "q-rank" => ("q", Contiguous() with { Q = Make(Batch * SeqlenQ, HeadsQ, D) }),
        "vcache-shape" => ("vCache", Contiguous() with { VCache = Make(Batch, SeqlenCache + 1, HeadsKv, D) }),
        "cache-batch-too-small" => ("kCache", Contiguous() with { KCache = Make(1, SeqlenCache, HeadsKv, D), VCache = Make(1, SeqlenCache, HeadsKv, D) }),
        "knew-heads" => ("kNew", Contiguous() with { KNew = Make(Batch, SeqlenNew, HeadsKv + 1, D), VNew = Make(Batch, SeqlenNew, HeadsKv + 1, D) }),
        "vnew-missing" => ("vNew", Contiguous() with { VNew = null }),
        "seqlens-missing" => ("cacheSeqlens", Contiguous() with { Seqlens = null }),
        "seqlens-length" => ("cacheSeqlens", Contiguous() with { Seqlens = [3] }),
        "seqlens-negative" => ("cacheSeqlens", Contiguous() with { Seqlens = [3, -1] }),
        // Sequence 0 is fine; sequence 1 would write past the cache. Nothing may be written for sequence 0 either.
        "seqlens-past-capacity" => ("cacheSeqlens", Contiguous() with { Seqlens = [3, SeqlenCache - SeqlenNew + 1] }),
        "batch-index-range" => ("cacheBatchIndex", Contiguous() with { BatchIndex = [1, Batch] }),
        "batch-index-with-pages" => ("cacheBatchIndex", Paged() with { BatchIndex = [1, 0] }),
        "block-table-rows" => ("blockTable", Paged() with { BlockTable = Tensor.Create(new[] { 6, 2, 0 }, [1, Blocks]) }),
        // Sequence 1's append reaches position 8, its third page: that entry is used, so it is checked.
        "block-table-entry" => ("blockTable", Paged() with { BlockTable = Tensor.Create(new[] { 6, 2, 0, 5, 1, 7 }, [Batch, Blocks]) }),
        "block-table-negative" => ("blockTable", Paged() with { BlockTable = Tensor.Create(new[] { -1, 2, 0, 5, 1, 3 }, [Batch, Blocks]) }),
        "rotary-without-append" => ("rotaryCos", Contiguous() with { KNew = null, VNew = null }),
        "sin-missing" => ("rotarySin", Contiguous() with { Sin = null }),
        "rotary-dim" => ("rotaryCos", Contiguous() with { Cos = Make(SeqlenCache, D / 2 + 1), Sin = Make(SeqlenCache, D / 2 + 1) }),
        "rotary-positions" => ("rotaryCos", Contiguous() with { Cos = Make(SeqlenCache - 1, D / 4), Sin = Make(SeqlenCache - 1, D / 4) }),
        "dropout" => ("options.DropoutProbability", Contiguous() with { Options = new AttentionOptions { DropoutProbability = 0.1f } }),
        "probabilities" => ("options.ReturnProbabilities", Contiguous() with { Options = new AttentionOptions { ReturnProbabilities = true } }),
        "splits" => ("cacheOptions.NumSplits", Contiguous() with { CacheOptions = new KvCacheOptions { NumSplits = -1 } }),
        "alibi-shape" => ("options.AlibiSlopes", Contiguous() with { Options = new AttentionOptions { AlibiSlopes = Make(HeadsQ + 1) } }),
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, null),
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void RejectsWithoutTouchingTheCache(string name)
    {
        var (param, call) = Case(name);
        var kBefore = KvCacheCheck.Flatten(call.KCache);
        var vBefore = KvCacheCheck.Flatten(call.VCache);
        var exception = Assert.ThrowsAny<ArgumentException>(call.Run);
        Assert.Equal(param, exception.ParamName);
        Assert.False(string.IsNullOrWhiteSpace(exception.Message));
        Tolerance.AssertIdentical("kCache", KvCacheCheck.Flatten(call.KCache), kBefore, name);
        Tolerance.AssertIdentical("vCache", KvCacheCheck.Flatten(call.VCache), vBefore, name);
    }

    /// <summary>The baselines themselves are valid, so each case fails for its one broken argument only.</summary>
    [Fact]
    public void BaselinesAreValid()
    {
        Contiguous().Run();
        Paged().Run();
    }

    [Fact]
    public void RejectsUnsupportedElementType()
    {
        var q = Tensor.Create(new double[Batch * HeadsQ * D], [Batch, 1, HeadsQ, D]);
        var cache = Tensor.Create(new double[Batch * SeqlenCache * HeadsKv * D], [Batch, SeqlenCache, HeadsKv, D]);
        var exception = Assert.ThrowsAny<ArgumentException>(() =>
            FlashAttention.ForwardWithKvCache<double>(q, cache, cache, cancellationToken: TestContext.Current.CancellationToken));
        Assert.Equal("q", exception.ParamName);
    }
}
