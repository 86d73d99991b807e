using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The hostile-number cases of <see cref="HostileInputTests"/> on the CUDA kernels (fp16 and bf16), held to the same rules
/// (<see cref="HostileInputs"/>), and compared with the CPU path on the same inputs: element for element where the values are
/// special (NaN positions, +-inf, the LSE's +inf, the promised zeros), and within the tolerance rule of the float64 reference
/// elsewhere (each path's clean run is checked against the reference, and every element the rules call Clean is bit for bit
/// that run's value). Outputs and gradients start filled with a finite sentinel (bytes 0x55), not NaN: an element the
/// kernels fail to write then shows as a wrong value instead of passing for a propagated NaN.
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaHostileInputTests
{
    /// <summary>0x5555 is 85.3 in fp16, 1.5e13 in bf16 and fp32: finite, nonzero and unlike any result.</summary>
    private const byte Sentinel = 0x55;

    /// <summary>Every forward case at fp16 and bf16 (HostileCases.Data: "scores-overflow" is bf16 only).</summary>
    public static TheoryData<string, Dtype> ForwardCases() => HostileCases.Data(backward: false, Dtype.Fp16, Dtype.Bf16);

    public static TheoryData<string, Dtype> BackwardCases() => HostileCases.Data(backward: true, Dtype.Fp16, Dtype.Bf16);

    [Theory]
    [MemberData(nameof(ForwardCases))]
    public void ForwardFollowsTheRulesAndMatchesTheCpuPath(string name, Dtype dtype)
    {
        GpuRequirement.SkipIfUnavailable();
        var c = HostileCases.All[name];
        if (dtype == Dtype.Fp16) Forward<Half>(c);
        else Forward<BFloat16>(c);
    }

    [Theory]
    [MemberData(nameof(BackwardCases))]
    public void BackwardFollowsTheRulesAndMatchesTheCpuPath(string name, Dtype dtype)
    {
        GpuRequirement.SkipIfUnavailable();
        var c = HostileCases.All[name];
        if (dtype == Dtype.Fp16) Backward<Half>(c);
        else Backward<BFloat16>(c);
    }

    private static void Forward<T>(HostileCase c) where T : unmanaged
    {
        var (clean, poisoned) = HostileInputs.Create<T>(c);
        var cpu = HostileCheck.Forward(c, clean, poisoned, HostileCheck.CpuForward);
        var gpu = HostileCheck.Forward(c, clean, poisoned, ForwardOnGpu);
        string context = $"case {c.Name} {AttentionCheck.Context<T>(c.Problem, c.Options, clean.Random)}";
        HostileInputs.AssertSameSpecialValues("O", cpu.O, gpu.O, cpu.Expected.O, HostileInputs.QPosition(c.Problem), context);
        HostileInputs.AssertSameSpecialValues("LSE", cpu.Lse, gpu.Lse, cpu.Expected.Lse, HostileInputs.LsePosition(c.Problem), context);
    }

    private static void Backward<T>(HostileCase c) where T : unmanaged
    {
        var (clean, poisoned) = HostileInputs.Create<T>(c);
        var cpu = HostileCheck.Backward(c, clean, poisoned, HostileCheck.CpuForward, HostileCheck.CpuBackward);
        var gpu = HostileCheck.Backward(c, clean, poisoned, ForwardOnGpu, BackwardOnGpu);
        string context = $"case {c.Name} {AttentionCheck.Context<T>(c.Problem, c.Options, clean.Random)}";
        HostileInputs.AssertSameSpecialValues("dQ", cpu.DQ, gpu.DQ, cpu.Expected.DQ, HostileInputs.QPosition(c.Problem), context);
        HostileInputs.AssertSameSpecialValues("dK", cpu.DK, gpu.DK, cpu.Expected.DK, HostileInputs.KvPosition(c.Problem), context);
        HostileInputs.AssertSameSpecialValues("dV", cpu.DV, gpu.DV, cpu.Expected.DV, HostileInputs.KvPosition(c.Problem), context);
    }

    /// <summary>Documented limit (TEST-MATRIX.md, rule 10): fp16 backward at logits of 1.2e4 on the GPU is held to 4x the
    /// rule's bound. Measured (H100, 2026-11-25 14:05Z-14:30Z, about 50 runs, the earlier rule): about one seed in ten put dK
    /// 1.4-3x past the bound; under the current rule (the naive backward takes the O under test; 16:45Z, 20 runs) 1 case in
    /// 40 missed, dV 1.03x. Both sides round dS to fp16 before dK = dS^T Q, whose terms (q = +-1024 m in every column)
    /// cancel, so that rounding likely dominates both errors (not proven); neither a hi + lo split of LSE * log2(e) in the
    /// kernel nor a baseline that recomputes P from its fp32 LSE changed the rate. Up to 6e3 (fp16) and 2.5e4 (bf16) the GPU
    /// meets the rule itself; the CPU path keeps dS in fp32 and meets it at 1.2e4. FA_RUN_KNOWN_LIMITS=1 holds these cases
    /// to the rule as written, to re-measure how often they miss it.</summary>
    private const double Fp16BackwardLimitFactor = 4;

    /// <summary>Large exact logits of magnitude up to 3 * 2^log2 (2.5e4 at 2^13, the "scores around 1e4"; 2e5 at 2^16,
    /// the largest fp16 holds exactly): forward against the reference, as on the CPU path.</summary>
    [Theory]
    [InlineData(Dtype.Fp16, false, 13)]
    [InlineData(Dtype.Fp16, true, 13)]
    [InlineData(Dtype.Fp16, false, 16)]
    [InlineData(Dtype.Fp16, true, 16)]
    [InlineData(Dtype.Bf16, false, 13)]
    [InlineData(Dtype.Bf16, true, 13)]
    public void LargeLogitsForwardMatchesReference(Dtype dtype, bool causal, int log2Magnitude)
    {
        GpuRequirement.SkipIfUnavailable();
        var problem = new Problem(2, 100, 150, 4, 2, 64);
        if (dtype == Dtype.Fp16) LargeLogits<Half>(problem, log2Magnitude, causal, backward: false);
        else LargeLogits<BFloat16>(problem, log2Magnitude, causal, backward: false);
    }

    /// <summary>Backward at large logits (see HostileInputTests: its accuracy falls with |logits| through the fp32 LSE).</summary>
    [Theory]
    [InlineData(Dtype.Fp16, false, 11)]
    [InlineData(Dtype.Fp16, true, 11)]
    [InlineData(Dtype.Fp16, false, LargeScores.BackwardLog2Magnitude)]
    [InlineData(Dtype.Fp16, true, LargeScores.BackwardLog2Magnitude)]
    [InlineData(Dtype.Bf16, false, 12)]
    [InlineData(Dtype.Bf16, true, 12)]
    [InlineData(Dtype.Bf16, false, 13)]
    [InlineData(Dtype.Bf16, true, 13)]
    public void LargeLogitsBackwardMatchesReference(Dtype dtype, bool causal, int log2Magnitude)
    {
        GpuRequirement.SkipIfUnavailable();
        bool documentedLimit = dtype == Dtype.Fp16 && log2Magnitude >= LargeScores.BackwardLog2Magnitude
            && Environment.GetEnvironmentVariable("FA_RUN_KNOWN_LIMITS") != "1";
        var problem = new Problem(2, 100, 150, 4, 2, 64);
        try
        {
            if (documentedLimit) Tolerance.DocumentedLimitFactor.Value = Fp16BackwardLimitFactor;
            if (dtype == Dtype.Fp16) LargeLogits<Half>(problem, log2Magnitude, causal, backward: true);
            else LargeLogits<BFloat16>(problem, log2Magnitude, causal, backward: true);
        }
        finally
        {
            Tolerance.DocumentedLimitFactor.Value = null;   // never widen another test's checks
        }
    }

    private static void LargeLogits<T>(Problem problem, int log2Magnitude, bool causal, bool backward) where T : unmanaged
    {
        var (inputs, options) = LargeScores.FineLogits<T>(problem, log2Magnitude);
        options = options with { Causal = causal };
        if (backward) AttentionCheck.Backward(problem, options, inputs, ForwardOnGpu, BackwardOnGpu);
        else AttentionCheck.Forward(problem, options, inputs: inputs, run: ForwardOnGpu);
    }

    /// <summary>Logits that jump by thousands to millions between key blocks (the kernel visits them from the last one down).
    /// The softmax is one-hot, so O is one row of v. bf16 meets the tolerance rule; fp16 is held to its documented behaviour
    /// (TEST-MATRIX.md, rule 10): every element within one fp16 ulp of the reference. The kernel's P for the winning key is
    /// 2^r, r the fp32 rounding of m * c (|r| up to |m * c| * 2^-25, 2^-11 at logits ~1e4), which P V reads rounded to 1 and the
    /// row sum keeps, so O = v / 2^r can land one ulp off where the naive baseline is exact; flash-attn computes it the same way.</summary>
    [Theory]
    [InlineData(Dtype.Fp16, 100f, false)]
    [InlineData(Dtype.Fp16, 100f, true)]
    [InlineData(Dtype.Fp16, 10000f, true)]
    [InlineData(Dtype.Bf16, 10000f, false)]
    [InlineData(Dtype.Bf16, 100f, true)]
    public void OnlineSoftmaxSurvivesHugeJumps(Dtype dtype, float step, bool causal)
    {
        GpuRequirement.SkipIfUnavailable();
        var problem = new Problem(1, 150, 200, 2, 1, 16);
        if (dtype == Dtype.Fp16) OneHotWithinOneUlp(problem, step, causal);
        else
        {
            var (inputs, options) = LargeScores.Ramp<BFloat16>(problem, step, causal);
            AttentionCheck.Forward(problem, options, inputs: inputs, run: ForwardOnGpu);
        }
    }

    private static void OneHotWithinOneUlp(Problem problem, float step, bool causal)
    {
        var (inputs, options) = LargeScores.Ramp<Half>(problem, step, causal);
        var result = ForwardOnGpu(inputs, options);
        var settings = Reference.ReferenceSettings.From(options, problem.HeadDim, problem.Batch, problem.HeadsQ);
        var ref64 = Reference.ReferenceAttention.Forward(problem.Shape, settings, Precision<Half>.ToDoubles(inputs.Q),
            Precision<Half>.ToDoubles(inputs.K), Precision<Half>.ToDoubles(inputs.V));
        string context = AttentionCheck.Context<Half>(problem, options, inputs.Random);
        var o = Precision<Half>.Flatten(result.Output);
        int offByOne = 0;
        for (int i = 0; i < o.Length; i++)
        {
            double reference = ref64.Output[i], ulp = Fp16Ulp(reference), error = Math.Abs(o[i] - reference);
            Assert.True(error <= ulp, $"O[{i}] = {o[i]:R}, reference {reference:R}: {error / ulp:F2} fp16 ulps apart (at most 1). {context}");
            if (error > 0) offByOne++;
        }
        var naiveLse = Reference.ReferenceAttention.Forward(problem.Shape, settings, Precision<Half>.ToFloats(inputs.Q),
            Precision<Half>.ToFloats(inputs.K), Precision<Half>.ToFloats(inputs.V), Precision<Half>.OperandRounding).LogSumExp;
        Tolerance.AssertClose("LSE", Flat.Of(result.LogSumExp), ref64.LogSumExp, Flat.Widen(naiveLse), Precision<Half>.FloorUnit, context);
        TestContext.Current.TestOutputHelper?.WriteLine($"{offByOne} of {o.Length} elements one ulp off");
    }

    /// <summary>The spacing of fp16 values around x (normal range; 2^-24 below it).</summary>
    private static double Fp16Ulp(double x)
    {
        double magnitude = Math.Abs(x);
        return magnitude < Math.Pow(2, -14) ? Math.Pow(2, -24) : Math.Pow(2, Math.Floor(Math.Log2(magnitude)) - 10);
    }

    /// <summary>Softcap turns +-inf scores into +-cap (this checks that tanh.approx.f32 gives +-1 for +-inf): a finite output, equal to the reference.</summary>
    [Theory]
    [InlineData(Dtype.Fp16)]
    [InlineData(Dtype.Bf16)]
    public void SoftcapBoundsInfiniteScores(Dtype dtype)
    {
        GpuRequirement.SkipIfUnavailable();
        if (dtype == Dtype.Fp16) Softcap<Half>();
        else Softcap<BFloat16>();
    }

    private static void Softcap<T>() where T : unmanaged
    {
        var (problem, inputs) = HostileInputTests.InfiniteQueries<T>();
        var result = AttentionCheck.Forward(problem, new AttentionOptions { Softcap = 5f }, inputs: inputs, run: ForwardOnGpu);
        Assert.All(Precision<T>.Flatten(result.Output), x => Assert.True(double.IsFinite(x), $"O = {x}"));
    }

    public static TheoryData<Dtype, int, int, int, int> EmptyShapes()
    {
        var data = new TheoryData<Dtype, int, int, int, int>();
        foreach (var dtype in new[] { Dtype.Fp16, Dtype.Bf16 })
        {
            data.Add(dtype, 0, 5, 7, 2);
            data.Add(dtype, 2, 0, 7, 2);
            data.Add(dtype, 2, 5, 0, 2);
            data.Add(dtype, 2, 0, 0, 2);
            data.Add(dtype, 2, 5, 7, 0);  // heads_q 0: dK = dV = 0 must still be written
        }
        return data;
    }

    /// <summary>Empty work on the GPU: the CPU path's shapes and values, into outputs that start as the sentinel.</summary>
    [Theory]
    [MemberData(nameof(EmptyShapes))]
    public void EmptyShapesMatchTheCpuPath(Dtype dtype, int batch, int seqlenQ, int seqlenK, int headsQ)
    {
        GpuRequirement.SkipIfUnavailable();
        var problem = new Problem(batch, seqlenQ, seqlenK, headsQ, 1, 8);
        if (dtype == Dtype.Fp16) Empty<Half>(problem);
        else Empty<BFloat16>(problem);
    }

    private static void Empty<T>(Problem problem) where T : unmanaged
    {
        var inputs = Inputs<T>.Create(problem);
        var options = new AttentionOptions { Causal = true };
        var forward = ForwardOnGpu(inputs, options);
        EmptyWork.AssertPromises(problem, forward, BackwardOnGpu(inputs, options, forward), "CUDA");
    }

    /// <summary>One query and one key: O = v bit for bit, gradients within the rule.</summary>
    [Theory]
    [InlineData(Dtype.Fp16, false)]
    [InlineData(Dtype.Bf16, true)]
    public void SingleQuerySingleKey(Dtype dtype, bool causal)
    {
        GpuRequirement.SkipIfUnavailable();
        var problem = new Problem(2, 1, 1, 4, 2, 40);
        var options = new AttentionOptions { Causal = causal };
        if (dtype == Dtype.Fp16) SingleKey<Half>(problem, options);
        else SingleKey<BFloat16>(problem, options);
    }

    private static void SingleKey<T>(Problem problem, AttentionOptions options) where T : unmanaged
    {
        var inputs = Inputs<T>.Create(problem);
        AttentionCheck.Backward(problem, options, inputs, ForwardOnGpu, BackwardOnGpu);
        EmptyWork.AssertOutputIsValue(problem, inputs, ForwardOnGpu(inputs, options), "CUDA");
    }

    public static TheoryData<Dtype, int, int, int, int, bool> NoKeyRows() => new()
    {
        { Dtype.Fp16, 130, 64, -1, -1, true },
        { Dtype.Bf16, 300, 40, -1, -1, true },   // the empty rows span whole 128-row query blocks
        { Dtype.Bf16, 50, 10, 0, 0, false },
        { Dtype.Fp16, 100, 30, 5, -1, true },
    };

    /// <summary>Rows that see no key: O = 0, LSE = +inf and dQ = 0 exactly, as on the CPU path.</summary>
    [Theory]
    [MemberData(nameof(NoKeyRows))]
    public void RowsThatSeeNoKeyHaveZeroOutputAndGradients(Dtype dtype, int seqlenQ, int seqlenK, int left, int right, bool causal)
    {
        GpuRequirement.SkipIfUnavailable();
        var problem = new Problem(2, seqlenQ, seqlenK, 2, 1, 24);
        var options = new AttentionOptions { WindowLeft = left, WindowRight = right, Causal = causal };
        if (dtype == Dtype.Fp16) NoKey<Half>(problem, options);
        else NoKey<BFloat16>(problem, options);
    }

    private static void NoKey<T>(Problem problem, AttentionOptions options) where T : unmanaged
    {
        var inputs = Inputs<T>.Create(problem);
        AttentionCheck.Backward(problem, options, inputs, ForwardOnGpu, BackwardOnGpu);
        var forward = ForwardOnGpu(inputs, options);
        var grads = BackwardOnGpu(inputs, options, forward);
        Assert.True(HostileInputs.AssertRowsThatSeeNoKey(problem, options, forward, grads, "CUDA") > 0, "the case has no row that sees nothing");
    }

    /// <summary>Uploads q, k, v and runs the forward into O and LSE that start as the sentinel.</summary>
    /// <summary>The forward cases through the split-KV decode kernels (flash_attn_with_kvcache over a cache that holds exactly
    /// k and v), with one split and with two (keys 0..63 and 64..89, so a poisoned key at 77 lands in the second split and a
    /// NaN must survive the LSE merge instead of being dropped from it).</summary>
    public static TheoryData<string, Dtype, int> KvCacheCases()
    {
        var data = new TheoryData<string, Dtype, int>();
        foreach (var row in ForwardCases())
            foreach (int splits in (int[])[1, 2])
                data.Add(row.Data.Item1, row.Data.Item2, splits);
        return data;
    }

    [Theory]
    [MemberData(nameof(KvCacheCases))]
    public void KvCacheForwardFollowsTheRulesAndMatchesTheCpuPath(string name, Dtype dtype, int splits)
    {
        GpuRequirement.SkipIfUnavailable();
        var c = HostileCases.All[name];
        if (dtype == Dtype.Fp16) KvCacheForward<Half>(c, splits);
        else KvCacheForward<BFloat16>(c, splits);
    }

    private static void KvCacheForward<T>(HostileCase c, int splits) where T : unmanaged
    {
        var (clean, poisoned) = HostileInputs.Create<T>(c);
        var cpu = HostileCheck.Forward(c, clean, poisoned, HostileCheck.CpuForward);
        var gpu = HostileCheck.Forward(c, clean, poisoned, (inputs, options) => ForwardOnKvCache(inputs, options, splits));
        string context = $"case {c.Name} splits {splits} {AttentionCheck.Context<T>(c.Problem, c.Options, clean.Random)}";
        HostileInputs.AssertSameSpecialValues("O", cpu.O, gpu.O, cpu.Expected.O, HostileInputs.QPosition(c.Problem), context);
        HostileInputs.AssertSameSpecialValues("LSE", cpu.Lse, gpu.Lse, cpu.Expected.Lse, HostileInputs.LsePosition(c.Problem), context);
    }

    private static AttentionResult<T> ForwardOnKvCache<T>(Inputs<T> inputs, AttentionOptions options, int splits) where T : unmanaged =>
        IntoSentinelOutputs(inputs, (q, k, v, output, lse) =>
        {
            // Deterministic is a backward option; the decode kernels are deterministic anyway.
            FlashAttention.ForwardWithKvCacheInto(q, k, v, output, lse, options: options with { Deterministic = false },
                cacheOptions: new KvCacheOptions { NumSplits = splits });
            return null;
        });

    private static AttentionResult<T> ForwardOnGpu<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged =>
        IntoSentinelOutputs(inputs, (q, k, v, output, lse) => FlashAttention.ForwardInto(q, k, v, output, lse, options));

    /// <summary>Uploads q, k, v, runs <paramref name="launch"/> into O and LSE that start as the sentinel, and reads them back.</summary>
    private static AttentionResult<T> IntoSentinelOutputs<T>(Inputs<T> inputs,
        Func<CudaTensor<T>, CudaTensor<T>, CudaTensor<T>, CudaTensor<T>, CudaTensor<float>, DropoutState?> launch) where T : unmanaged =>
        DeviceInputs.Uploaded(inputs, (q, k, v) =>
        {
            var p = inputs.Problem;
            using var output = CudaTensor<T>.Allocate(p.QLengths, q.Device);
            using var lse = CudaTensor<float>.Allocate(p.LseLengths, q.Device);
            output.Fill(Sentinel);
            lse.Fill(Sentinel);
            var state = launch(q, k, v, output, lse);
            return new AttentionResult<T>(output.ToHost(), lse.ToHost(), state, null);
        });

    /// <summary>Backward into gradients that start as the sentinel.</summary>
    private static AttentionGradients<T> BackwardOnGpu<T>(Inputs<T> inputs, AttentionOptions options, AttentionResult<T> forward) where T : unmanaged =>
        CudaBackwardTests.BackwardOnGpu(inputs, options, forward, Sentinel);
}
