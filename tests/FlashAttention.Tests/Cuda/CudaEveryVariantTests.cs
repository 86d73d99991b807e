using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// Every compile-time kernel variant the library can launch, each once on a small odd shape against the float64 reference:
/// forward and backward at every head-dim bucket and element type with each combination of dropout, softcap, ALiBi and
/// deterministic dQ that validation accepts (dropout with softcap is rejected); the narrow-window tilings (forward and backward) with each score option; the KV-cache decode kernel (with its split
/// merge) with each of softcap and ALiBi; on sm_90 the Hopper forward's variants. The fixture compiles them all in parallel first (KernelWarmup, every variant), so
/// the cases time the kernels, not NVRTC. scripts/sanitize.sh runs this class under racecheck ("variants" workload).
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaEveryVariantTests(CudaEveryVariantTests.Compiled compiled) : IClassFixture<CudaEveryVariantTests.Compiled>
{
    /// <summary>Compiles every variant once for the class (nothing without a GPU: the cases then skip).</summary>
    public sealed class Compiled
    {
        public Compiled()
        {
            if (CudaDevice.TryGetDefault(out var device, out _)) Variants = KernelWarmup.Run(device!, everyVariant: true).Count;
        }

        public int Variants { get; }
    }

    public static TheoryData<int, Dtype, bool, bool, bool, bool> FusedCases()
    {
        var data = new TheoryData<int, Dtype, bool, bool, bool, bool>();
        foreach (int headDim in new[] { 64, 112, 176, 256 })   // one per bucket; 112 and 176 are zero-padded in shared memory
            foreach (var dtype in new[] { Dtype.Fp16, Dtype.Bf16 })
                foreach (bool dropout in new[] { false, true })
                    foreach (bool softcap in new[] { false, true })
                        foreach (bool alibi in new[] { false, true })
                            foreach (bool deterministic in new[] { false, true })
                                if (!(dropout && softcap))   // rejected together (as in flash-attn): no such variant runs
                                    data.Add(headDim, dtype, dropout, softcap, alibi, deterministic);
        return data;
    }

    [Theory]
    [MemberData(nameof(FusedCases))]
    public void ForwardAndBackwardMatchTheReference(int headDim, Dtype dtype, bool dropout, bool softcap, bool alibi, bool deterministic)
    {
        GpuRequirement.SkipIfUnavailable();
        ForwardVariant.HopperPinned.Value = false;   // every FlashAttention-2 variant (CudaHopperForwardTests covers the sm_90 kernel)
        BackwardVariant.HopperPinned.Value = false;
        Assert.True(compiled.Variants > 0);
        // Causal on half the cases (seqlen_q < seqlen_k: bottom-right aligned), GQA 2:1.
        var problem = new Problem(1, 70, 90, 2, 1, headDim);
        Check(dtype, problem, random => Options(random, headDim, problem.HeadsQ, dropout, softcap, alibi) with
        {
            Deterministic = deterministic, Causal = deterministic ^ softcap,
        });
    }

    public static TheoryData<int, Dtype, bool, bool, bool> HopperCases()
    {
        var data = new TheoryData<int, Dtype, bool, bool, bool>();
        foreach (int headDim in new[] { 64, 112, 176, 256 })
            foreach (var dtype in new[] { Dtype.Fp16, Dtype.Bf16 })
                foreach (bool softcap in new[] { false, true })
                    foreach (bool alibi in new[] { false, true })
                        foreach (bool narrow in headDim == 64 ? new[] { false, true } : new[] { false })
                            data.Add(headDim, dtype, softcap, alibi, narrow);
        return data;
    }

    /// <summary>Every variant of the sm_90 forward (Kernels/flash_fwd_sm90.cu): each bucket and element type with each of
    /// softcap and ALiBi, and the 64-row narrow-window tiling at head dim 64; forward and gradients, through the sm_90
    /// backward (Kernels/flash_bwd_sm90.cu) where it covers the case (head dims up to 128; deterministic with softcap), else
    /// FlashAttention-2's. Skips on GPUs other than sm_90.</summary>
    [Theory]
    [MemberData(nameof(HopperCases))]
    public void HopperForwardMatchesTheReference(int headDim, Dtype dtype, bool softcap, bool alibi, bool narrowWindow)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        if (!ForwardVariant.HopperCovers(device.Architecture, headDim, false))
            Assert.Skip($"The Hopper forward needs an sm_90 GPU; this one is {device.Architecture}.");
        ForwardVariant.HopperPinned.Value = true;
        BackwardVariant.HopperPinned.Value = true;
        var problem = new Problem(1, 150, 90, 2, 1, headDim);
        Check(dtype, problem, random => Options(random, headDim, problem.HeadsQ, false, softcap, alibi) with
        {
            Deterministic = softcap,
            Causal = !narrowWindow && softcap != alibi,
            WindowLeft = narrowWindow ? 40 : -1,
            WindowRight = narrowWindow ? 8 : -1,
        });
    }

    public static TheoryData<Dtype, bool, bool, bool, bool> NarrowWindowCases()
    {
        var data = new TheoryData<Dtype, bool, bool, bool, bool>();
        foreach (var dtype in new[] { Dtype.Fp16, Dtype.Bf16 })
            foreach (bool dropout in new[] { false, true })
                foreach (bool softcap in new[] { false, true })
                    foreach (bool alibi in new[] { false, true })
                        foreach (bool deterministic in new[] { false, true })
                            if (!(dropout && softcap))
                                data.Add(dtype, dropout, softcap, alibi, deterministic);
        return data;
    }

    /// <summary>Head dim 64 with a (40, 8) window: the forward takes the 64-row narrow-window tiling (ForwardVariant), the
    /// backward 64-key blocks (BackwardVariant).</summary>
    [Theory]
    [MemberData(nameof(NarrowWindowCases))]
    public void NarrowWindowTilingMatchesTheReference(Dtype dtype, bool dropout, bool softcap, bool alibi, bool deterministic)
    {
        GpuRequirement.SkipIfUnavailable();
        ForwardVariant.HopperPinned.Value = false;   // the FlashAttention-2 kernel's narrow tiling (sm_90 would take the Hopper kernel)
        BackwardVariant.HopperPinned.Value = false;
        Assert.True(ForwardVariant.IsNarrowWindow(40, 8));
        var problem = new Problem(2, 150, 130, 4, 2, 64);
        Check(dtype, problem, random => Options(random, 64, problem.HeadsQ, dropout, softcap, alibi) with
        {
            WindowLeft = 40, WindowRight = 8, Deterministic = deterministic,
        });
    }

    /// <summary>The narrow-window tilings on longer sequences: many CTAs and a partial last block on both sides, seqlen_q above
    /// and below seqlen_k, windows whose first query blocks see no key, and a window of one key on each side.</summary>
    [Theory]
    [InlineData(700, 650, 100, 30)]
    [InlineData(650, 700, 256, 0)]
    [InlineData(900, 300, 10, 0)]      // bottom-right aligned: rows 0 to 599 see no key
    [InlineData(333, 1000, 0, 200)]
    [InlineData(517, 517, 1, 1)]
    public void NarrowWindowTilingOnLongerSequences(int seqlenQ, int seqlenK, int left, int right)
    {
        GpuRequirement.SkipIfUnavailable();
        ForwardVariant.HopperPinned.Value = false;   // as above
        BackwardVariant.HopperPinned.Value = false;
        Assert.True(ForwardVariant.IsNarrowWindow(left, right));
        var problem = new Problem(2, seqlenQ, seqlenK, 2, 1, 64);
        Check(Dtype.Bf16, problem, _ => new AttentionOptions { WindowLeft = left, WindowRight = right });
    }

    public static TheoryData<int, Dtype, string> DecodeCases()
    {
        var data = new TheoryData<int, Dtype, string>();
        foreach (int headDim in new[] { 64, 128, 256 })
            foreach (var dtype in new[] { Dtype.Fp16, Dtype.Bf16 })
                foreach (var options in new[] { "plain", "softcap", "alibi", "softcap+alibi" })
                    data.Add(headDim, dtype, options);
        return data;
    }

    /// <summary>The decode kernel through ForwardWithKvCacheInto, two splits so the merge kernel runs too.</summary>
    [Theory]
    [MemberData(nameof(DecodeCases))]
    public void DecodeMatchesTheReference(int headDim, Dtype dtype, string options)
    {
        GpuRequirement.SkipIfUnavailable();
        var problem = new Problem(2, 3, 200, 4, 2, headDim);
        var random = new TestRandom();
        var attention = KvCacheCaseOptions.Parse(options, problem.Batch, problem.HeadsQ, headDim, random);
        var cacheOptions = new KvCacheOptions { NumSplits = 2 };
        if (dtype == Dtype.Fp16)
            AttentionCheck.Forward(problem, attention, inputs: Inputs<Half>.Create(problem, random),
                run: (inputs, o) => CudaKvCacheAttentionTests.WholeCache(inputs, o, cacheOptions));
        else
            AttentionCheck.Forward(problem, attention, inputs: Inputs<BFloat16>.Create(problem, random),
                run: (inputs, o) => CudaKvCacheAttentionTests.WholeCache(inputs, o, cacheOptions));
    }

    private static AttentionOptions Options(TestRandom random, int headDim, int headsQ, bool dropout, bool softcap, bool alibi) => new()
    {
        DropoutProbability = dropout ? 0.15f : 0f,
        DropoutState = dropout ? random.NextDropoutState() : null,
        Softcap = softcap ? 5f : 0f,
        SoftmaxScale = softcap ? CudaScoreModifierTests.SaturatingScale(5f, headDim) : null,
        AlibiSlopes = alibi ? CudaScoreModifierTests.Slopes(random, 0, headsQ) : null,
    };

    private static void Check(Dtype dtype, Problem problem, Func<TestRandom, AttentionOptions> options)
    {
        var random = new TestRandom();
        if (dtype == Dtype.Fp16)
            AttentionCheck.Backward(problem, options(random), Inputs<Half>.Create(problem, random), CudaBackwardTests.ForwardOnGpu, CudaBackwardTests.BackwardOnGpu);
        else
            AttentionCheck.Backward(problem, options(random), Inputs<BFloat16>.Create(problem, random), CudaBackwardTests.ForwardOnGpu, CudaBackwardTests.BackwardOnGpu);
    }
}
