using FlashAttn.Cuda;
using FlashAttn.Dropout;
using FlashAttn.Tests.Infrastructure;
using FlashAttn.Validation;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// ReturnProbabilities on the GPU (Kernels/flash_probs.cu): P = exp(logit - LSE) from the GPU forward's LSE, against the
/// CPU path's P on the same inputs (tightly) and the float64 reference (with the tolerance rule); the dropout sign
/// pattern bit for bit; and the options the CUDA path still refuses.
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaProbabilitiesTests
{
    /// <summary>
    /// GPU against CPU P: both exponentiate fp32 logits of the same 16-bit inputs against their own forward's LSE, so they
    /// differ only by fp32 rounding: a few 1e-6 relative (the GPU forward's LSE uses ex2.approx and __logf). A semantic
    /// error (wrong mask, head, row or scale) moves P by 1e-3 or more.
    /// </summary>
    private const double RelativeTolerance = 2e-5, AbsoluteTolerance = 1e-6;

    /// <summary>How far a row of P without dropout may sum from 1.</summary>
    private const double RowSumTolerance = 5e-5;

    public static TheoryData<Dtype, int, int, int, bool, int, int> Cases => new()
    {
        // dtype, seqlen_q, seqlen_k, head dim, causal, window left, window right; all GQA 4:2, batch 2
        { Dtype.Fp16, 77, 130, 40, false, -1, -1 },
        { Dtype.Bf16, 77, 130, 64, true, -1, -1 },
        { Dtype.Fp16, 77, 130, 128, false, 20, 5 },
        { Dtype.Bf16, 130, 77, 40, true, -1, -1 },     // seqlen_q > seqlen_k causal: the leading rows see no key (LSE +inf)
        { Dtype.Fp16, 130, 77, 64, false, 7, 70 },
        { Dtype.Bf16, 77, 130, 128, false, 0, 0 },     // only the diagonal: every visible row holds a single 1
        { Dtype.Fp16, 33, 47, 59, true, 9, -1 },       // odd head dim, causal with a left window
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void ProbabilitiesMatchTheCpuPathAndTheReference(Dtype dtype, int seqlenQ, int seqlenK, int headDim, bool causal, int left, int right)
    {
        GpuRequirement.SkipIfUnavailable();
        var problem = new Problem(2, seqlenQ, seqlenK, 4, 2, headDim);
        var options = new AttentionOptions { Causal = causal, WindowLeft = left, WindowRight = right, ReturnProbabilities = true };
        if (dtype == Dtype.Fp16) CheckAgainstCpuAndReference<Half>(problem, options);
        else CheckAgainstCpuAndReference<BFloat16>(problem, options);
    }

    public static TheoryData<Dtype, string, int, int, int, bool> ScoreModifierCases => new()
    {
        // dtype, modifiers, seqlen_q, seqlen_k, head dim, causal; all GQA 4:2, batch 2
        { Dtype.Fp16, "softcap", 77, 130, 64, false },
        { Dtype.Bf16, "softcap", 130, 77, 40, true },               // seqlen_q > seqlen_k causal: rows that see no key
        { Dtype.Fp16, "alibi", 77, 130, 128, true },
        { Dtype.Bf16, "alibi-batch", 130, 77, 64, false },
        { Dtype.Fp16, "softcap+alibi-batch", 77, 130, 40, false },
        { Dtype.Bf16, "alibi+window", 77, 130, 128, false },
    };

    /// <summary>
    /// Softcap (cap 2 at scale 1: most scores saturate, as in ScoreModifierTests) and ALiBi (per head or per batch and head) in
    /// P. The GPU forward's LSE comes from the kernel's tanh.approx (relative error up to 2^-11, so up to cap * 2^-11 in a logit)
    /// while the probabilities kernel takes an accurate tanhf: with softcap, GPU and CPU P then differ by a per-row factor
    /// exp(LSE_cpu - LSE_gpu), which the CPU comparison divides out (the LSE itself is checked against the reference).
    /// </summary>
    [Theory]
    [MemberData(nameof(ScoreModifierCases))]
    public void ScoreModifiedProbabilitiesMatchTheCpuPathAndTheReference(Dtype dtype, string modifiers, int seqlenQ, int seqlenK, int headDim, bool causal)
    {
        GpuRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        var options = new AttentionOptions { Causal = causal, ReturnProbabilities = true };
        foreach (var modifier in modifiers.Split('+'))
            options = modifier switch
            {
                "softcap" => options with { Softcap = 2f, SoftmaxScale = 1f },
                "alibi" => options with { AlibiSlopes = Tensor.Create(random.Uniform(4, 0.05f, 0.5f), [4]) },
                "alibi-batch" => options with { AlibiSlopes = Tensor.Create(random.Uniform(2 * 4, 0.05f, 0.5f), [2, 4]) },
                "window" => options with { WindowLeft = 20, WindowRight = 5 },
                _ => throw new ArgumentException($"unknown modifier {modifier}", nameof(modifiers)),
            };
        var problem = new Problem(2, seqlenQ, seqlenK, 4, 2, headDim);
        if (dtype == Dtype.Fp16) CheckAgainstCpuAndReference(Inputs<Half>.Create(problem, random), options);
        else CheckAgainstCpuAndReference(Inputs<BFloat16>.Create(problem, random), options);
    }

    [Fact]
    public void PackedQkvViewsAreReadThroughStrides()
    {
        GpuRequirement.SkipIfUnavailable();
        var inputs = Inputs<BFloat16>.Create(new Problem(2, 97, 97, 3, 3, 40));
        var options = new AttentionOptions { Causal = true, ReturnProbabilities = true };
        var gpu = DeviceInputs.PackedViews(inputs, (q, k, v) => Download(q, k, v, inputs.Problem, options));
        var cpu = OnCpu(inputs, options);
        AssertMatchesCpu(gpu, cpu, inputs, options);
        AssertRowsSumToOne(gpu, inputs, options);
    }

    [Theory]
    [InlineData(0.3f, false, false)]
    [InlineData(0.1f, true, false)]
    [InlineData(0.2f, false, true)]  // ALiBi (batch, heads) with dropout: small slopes, so no visible P underflows to a sign-less 0
    public void DropoutSignsEqualTheCpuPathAndTheMaskBitForBit(float probability, bool causal, bool alibi)
    {
        GpuRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        var problem = new Problem(2, 77, 130, 4, 2, 64);
        var state = random.NextDropoutState();
        var options = new AttentionOptions
        {
            DropoutProbability = probability, DropoutState = state, Causal = causal, ReturnProbabilities = true,
            AlibiSlopes = alibi ? Tensor.Create(random.Uniform(2 * 4, 0.02f, 0.2f), [2, 4]) : null,
        };
        var inputs = Inputs<Half>.Create(problem, random);
        var gpu = OnGpu(inputs, options);
        var cpu = OnCpu(inputs, options);
        Assert.Equal(state, gpu.DropoutState);
        Assert.Equal(state, cpu.DropoutState);
        AssertMatchesCpu(gpu, cpu, inputs, options); // magnitudes, and +0 where hidden

        float[] g = Values(gpu.Probabilities), c = Values(cpu.Probabilities);
        var mask = new DropoutMask(probability, state, problem.HeadsQ);
        var settings = SettingsOf(problem, options, state);
        string context = AttentionCheck.Context<Half>(problem, options, random);
        int compared = 0, dropped = 0, kept = 0;
        ForEachElement(problem, (b, h, i, j, index) =>
        {
            bool gpuNegative = float.IsNegative(g[index]), cpuNegative = float.IsNegative(c[index]);
            if (gpuNegative != cpuNegative)
                Assert.Fail($"sign differs at batch {b} head {h} row {i} col {j}: GPU {g[index]:R}, CPU {c[index]:R}. {context}");
            if (!settings.IsVisible(i, j, problem.SeqlenQ, problem.SeqlenK)) return;
            bool droppedByMask = !mask.IsKept(b, h, i, j);
            if (gpuNegative != droppedByMask)
                Assert.Fail($"batch {b} head {h} row {i} col {j}: GPU P = {g[index]:R} but the mask says {(droppedByMask ? "dropped" : "kept")}. {context}");
            compared++;
            if (droppedByMask) dropped++;
            else kept++;
        });
        Assert.True(compared > 20_000 && dropped > 100 && kept > 100, $"compared {compared}, dropped {dropped}, kept {kept}. {context}");
    }

    [Fact]
    public void ProbabilitiesAreOnlyReturnedOnRequest()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([1, 8, 2, 64], device);
        q.Fill(0);
        using (var without = FlashAttention.Forward(q, q, q))
            Assert.Null(without.Probabilities);
        using var with = FlashAttention.Forward(q, q, q, new AttentionOptions { ReturnProbabilities = true });
        Assert.NotNull(with.Probabilities);
        Assert.Equal([1, 2, 8, 8], with.Probabilities.Lengths.ToArray());
        // q = k = 0: every logit is 0, so each row is uniform over its 8 keys.
        Assert.All(Values(with.Probabilities.ToHost()), p => Assert.Equal(0.125f, p, 1e-5f));
    }

    [Fact]
    public void EmptyBatchReturnsEmptyProbabilities()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([0, 8, 2, 64], device);
        using var result = FlashAttention.Forward(q, q, q, new AttentionOptions { ReturnProbabilities = true });
        Assert.NotNull(result.Probabilities);
        Assert.Equal([0, 2, 8, 8], result.Probabilities.Lengths.ToArray());
    }

    [Fact]
    public void ForwardIntoRejectsReturnProbabilitiesBeforeWriting()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([1, 8, 2, 64], device);
        using var output = CudaTensor<Half>.Allocate([1, 8, 2, 64], device);
        using var lse = CudaTensor<float>.Allocate([1, 2, 8], device);
        q.Fill(0);
        lse.Fill(0xFF);
        var error = Assert.Throws<ArgumentException>(() =>
            FlashAttention.ForwardInto(q, q, q, output, lse, new AttentionOptions { ReturnProbabilities = true }));
        Assert.Equal("options", error.ParamName);
        Assert.All(Values(lse.ToHost()), x => Assert.True(float.IsNaN(x), $"LSE was written: {x}"));
    }

    private static void CheckAgainstCpuAndReference<T>(Problem problem, AttentionOptions options) where T : unmanaged =>
        CheckAgainstCpuAndReference(Inputs<T>.Create(problem), options);

    private static void CheckAgainstCpuAndReference<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged
    {
        // O, LSE and P against the float64 reference (tolerance rule), and P's sign against the reference's mask.
        var gpu = AttentionCheck.Forward<T>(inputs.Problem, options, checkProbabilities: true, inputs: inputs, run: OnGpu);
        var cpu = OnCpu(inputs, options);
        bool softcap = options.Softcap > 0;
        AssertMatchesCpu(gpu, cpu, inputs, options, rescaleByLse: softcap);
        if (!softcap) // with softcap a GPU row sums to exp(LSE_exact - LSE_gpu), off 1 by the forward's tanh.approx error
            AssertRowsSumToOne(gpu, inputs, options);
    }

    /// <summary>Element by element: hidden entries are +0 on both paths, visible ones agree to fp32 rounding; with
    /// <paramref name="rescaleByLse"/>, after scaling the CPU row by exp(LSE_cpu - LSE_gpu) (see the score modifier cases).</summary>
    private static void AssertMatchesCpu<T>(AttentionResult<T> gpu, AttentionResult<T> cpu, Inputs<T> inputs, AttentionOptions options,
        bool rescaleByLse = false) where T : unmanaged
    {
        var p = inputs.Problem;
        nint[] expectedLengths = [p.Batch, p.HeadsQ, p.SeqlenQ, p.SeqlenK];
        Assert.Equal(expectedLengths, gpu.Probabilities!.Lengths.ToArray());
        float[] g = Values(gpu.Probabilities), c = Values(cpu.Probabilities);
        if (rescaleByLse)
        {
            float[] lseGpu = Values(gpu.LogSumExp), lseCpu = Values(cpu.LogSumExp);
            for (int row = 0; row < lseGpu.Length; row++)
            {
                if (!float.IsFinite(lseGpu[row]) || !float.IsFinite(lseCpu[row])) continue;
                float factor = (float)Math.Exp((double)lseCpu[row] - lseGpu[row]);
                for (int j = 0; j < p.SeqlenK; j++) c[(long)row * p.SeqlenK + j] *= factor;
            }
        }
        var settings = SettingsOf(p, options, gpu.DropoutState);
        string context = AttentionCheck.Context<T>(p, options, inputs.Random);
        int visible = 0;
        ForEachElement(p, (b, h, i, j, index) =>
        {
            if (!settings.IsVisible(i, j, p.SeqlenQ, p.SeqlenK))
            {
                if (BitConverter.SingleToInt32Bits(g[index]) != 0 || BitConverter.SingleToInt32Bits(c[index]) != 0)
                    Assert.Fail($"hidden entry batch {b} head {h} row {i} col {j}: GPU {g[index]:R}, CPU {c[index]:R}, expected +0. {context}");
                return;
            }
            visible++;
            double error = Math.Abs((double)g[index] - c[index]);
            if (double.IsNaN(error) || error > RelativeTolerance * Math.Abs(c[index]) + AbsoluteTolerance)
                Assert.Fail($"batch {b} head {h} row {i} col {j}: GPU {g[index]:R}, CPU {c[index]:R} (|diff| {error:G3}). {context}");
        });
        Assert.True(visible > 0, $"no visible entry compared. {context}");
    }

    /// <summary>Without dropout a row's P sums to 1 when the row sees a key, and is all zero (LSE +inf) when it sees none.</summary>
    private static void AssertRowsSumToOne<T>(AttentionResult<T> gpu, Inputs<T> inputs, AttentionOptions options) where T : unmanaged
    {
        var p = inputs.Problem;
        float[] g = Values(gpu.Probabilities);
        var settings = SettingsOf(p, options, null);
        string context = AttentionCheck.Context<T>(p, options, inputs.Random);
        int rows = 0;
        for (int row = 0; row < p.Batch * p.HeadsQ * p.SeqlenQ; row++)
        {
            int i = row % p.SeqlenQ;
            double sum = 0;
            for (int j = 0; j < p.SeqlenK; j++) sum += g[(long)row * p.SeqlenK + j];
            bool seesAKey = Enumerable.Range(0, p.SeqlenK).Any(j => settings.IsVisible(i, j, p.SeqlenQ, p.SeqlenK));
            double expected = seesAKey ? 1 : 0;
            if (!(Math.Abs(sum - expected) <= RowSumTolerance))
                Assert.Fail($"row {row} (query {i}) of P sums to {sum:R}, expected {expected}. {context}");
            if (seesAKey) rows++;
        }
        Assert.True(rows > 0, $"no row sees a key. {context}");
    }

    private static AttentionResult<T> OnGpu<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged =>
        DeviceInputs.Uploaded(inputs, (q, k, v) => Download(q, k, v, inputs.Problem, options));

    private static AttentionResult<T> Download<T>(CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, Problem problem, AttentionOptions options)
        where T : unmanaged
    {
        using var result = FlashAttention.Forward(q, k, v, options);
        Assert.NotNull(result.Probabilities);
        Assert.Equal([problem.Batch, problem.HeadsQ, problem.SeqlenQ, problem.SeqlenK], result.Probabilities.Lengths.ToArray());
        return new AttentionResult<T>(result.Output.ToHost(), result.LogSumExp.ToHost(), result.DropoutState, result.Probabilities.ToHost());
    }

    private static AttentionResult<T> OnCpu<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged
    {
        var result = FlashAttention.Forward<T>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, TestContext.Current.CancellationToken);
        Assert.NotNull(result.Probabilities);
        return result;
    }

    private static AttentionSettings SettingsOf(Problem p, AttentionOptions options, DropoutState? state) =>
        AttentionSettings.Resolve(options, ProblemShape.Fixed(p.Batch, p.SeqlenQ, p.SeqlenK, p.HeadsQ, p.HeadsKv, p.HeadDim), state);

    /// <summary>Visits every (batch, head, row, col) of a dense (batch, heads_q, seqlen_q, seqlen_k) tensor with its flat index.</summary>
    private static void ForEachElement(Problem p, Action<int, int, int, int, long> visit)
    {
        long index = 0;
        for (int b = 0; b < p.Batch; b++)
            for (int h = 0; h < p.HeadsQ; h++)
                for (int i = 0; i < p.SeqlenQ; i++)
                    for (int j = 0; j < p.SeqlenK; j++)
                        visit(b, h, i, j, index++);
    }

    private static float[] Values(Tensor<float>? tensor)
    {
        Assert.NotNull(tensor);
        var flat = new float[tensor.FlattenedLength];
        tensor.FlattenTo(flat);
        return flat;
    }
}
