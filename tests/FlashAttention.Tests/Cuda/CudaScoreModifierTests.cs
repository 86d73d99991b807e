using System.Runtime.InteropServices;
using FlashAttn.Cuda;
using FlashAttn.Dropout;
using FlashAttn.Tests.Infrastructure;
using FlashAttn.Validation;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// Softcap and ALiBi in the CUDA forward and backward kernels (compile-time variants, Kernels/fa_score_mods.cuh): O, LSE, dQ,
/// dK and dV against the float64 reference with the tolerance rule, the forward's outputs and the gradients poisoned (NaN)
/// before every launch. Softcap cases scale the scores so that |scale * QK^T| has a standard deviation of one cap: a third of
/// them lie beyond the cap, where the tanh saturates and its derivative (which enters dS) is small.
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaScoreModifierTests
{
    public static TheoryData<Dtype, int, int, int, int, int, int, bool, float> SoftcapCases => new()
    {
        // dtype, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head dim, causal, cap
        { Dtype.Fp16, 2, 113, 200, 4, 2, 40, false, 5f },     // head dim padded 40 -> 64, GQA 2:1, seqlen_q < seqlen_k
        { Dtype.Bf16, 1, 200, 113, 4, 1, 64, true, 30f },     // MQA, seqlen_q > seqlen_k causal: leading rows see no key
        { Dtype.Fp16, 1, 150, 150, 2, 2, 128, true, 30f },
        { Dtype.Bf16, 1, 130, 97, 2, 2, 256, false, 5f },     // the wide backward kernel
        { Dtype.Fp16, 1, 77, 211, 2, 2, 256, true, 30f },
        { Dtype.Fp16, 1, 97, 130, 4, 2, 160, true, 5f },      // bucket 192
    };

    public static TheoryData<Dtype, int, int, int, int, int, int, bool, bool> AlibiCases => new()
    {
        // dtype, batch, seqlen_q, seqlen_k, heads_q, heads_kv, head dim, causal, slopes per (batch, head) rather than per head
        { Dtype.Fp16, 2, 113, 200, 4, 2, 40, false, false },
        { Dtype.Bf16, 2, 200, 113, 4, 1, 64, true, true },    // MQA, seqlen_q > seqlen_k causal
        { Dtype.Fp16, 1, 150, 150, 3, 3, 128, true, true },
        { Dtype.Bf16, 2, 97, 130, 2, 2, 256, false, false },  // the wide backward kernel
        { Dtype.Fp16, 1, 130, 97, 4, 2, 160, false, true },   // bucket 192
        { Dtype.Bf16, 1, 1, 300, 2, 1, 128, false, false },   // decoding-like: one query, distances up to 299
    };

    [Theory]
    [MemberData(nameof(SoftcapCases))]
    public void SoftcapMatchesReference(Dtype dtype, int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal, float cap)
    {
        GpuRequirement.SkipIfUnavailable();
        Check(dtype, new Problem(batch, seqlenQ, seqlenK, headsQ, headsKv, headDim),
            _ => new AttentionOptions { Causal = causal, Softcap = cap, SoftmaxScale = SaturatingScale(cap, headDim) });
    }

    [Theory]
    [MemberData(nameof(AlibiCases))]
    public void AlibiMatchesReference(Dtype dtype, int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal, bool perBatch)
    {
        GpuRequirement.SkipIfUnavailable();
        Check(dtype, new Problem(batch, seqlenQ, seqlenK, headsQ, headsKv, headDim),
            random => new AttentionOptions { Causal = causal, AlibiSlopes = Slopes(random, perBatch ? batch : 0, headsQ) });
    }

    [Theory]
    [InlineData(32, 16)]
    [InlineData(100, -1)]
    [InlineData(7, 70)]
    public void SlidingWindowsWithSoftcapAndAlibiMatchReference(int left, int right)
    {
        GpuRequirement.SkipIfUnavailable();
        Check(Dtype.Bf16, new Problem(1, 300, 257, 4, 2, 64),
            _ => new AttentionOptions { WindowLeft = left, WindowRight = right, Softcap = 5f, SoftmaxScale = SaturatingScale(5f, 64) });
        Check(Dtype.Fp16, new Problem(2, 257, 300, 4, 2, 128),
            random => new AttentionOptions { WindowLeft = left, WindowRight = right, AlibiSlopes = Slopes(random, 2, 4) });
    }

    [Theory]
    [InlineData(Dtype.Fp16, 40, true, false)]
    [InlineData(Dtype.Bf16, 128, false, true)]
    [InlineData(Dtype.Bf16, 256, true, true)]
    [InlineData(Dtype.Fp16, 160, false, false)]
    public void SoftcapAndAlibiTogetherMatchReference(Dtype dtype, int headDim, bool causal, bool perBatch)
    {
        GpuRequirement.SkipIfUnavailable();
        Check(dtype, new Problem(2, 130, 97, 4, 2, headDim), random => new AttentionOptions
        {
            Causal = causal, Softcap = 5f, SoftmaxScale = SaturatingScale(5f, headDim), AlibiSlopes = Slopes(random, perBatch ? 2 : 0, 4),
        });
    }

    /// <summary>ALiBi and dropout compiled together: forward and backward against the reference, which draws its mask from the
    /// same Philox specification as the CPU path (and the GPU mask is checked against that specification bit for bit below).</summary>
    [Theory]
    [InlineData(Dtype.Fp16, 64, false, false)]
    [InlineData(Dtype.Bf16, 128, true, true)]
    [InlineData(Dtype.Fp16, 256, true, false)]
    [InlineData(Dtype.Bf16, 40, false, true)]
    public void AlibiWithDropoutMatchesReference(Dtype dtype, int headDim, bool perBatch, bool causal)
    {
        GpuRequirement.SkipIfUnavailable();
        Check(dtype, new Problem(2, 113, 150, 4, 2, headDim), random => new AttentionOptions
        {
            Causal = causal, AlibiSlopes = Slopes(random, perBatch ? 2 : 0, 4), DropoutProbability = 0.17f, DropoutState = random.NextDropoutState(),
        });
    }

    /// <summary>
    /// The keep mask of the ALiBi + dropout variant is the CPU path's specification bit for bit (the V-identity trick of
    /// <see cref="CudaDropoutTests"/>: O[i, j] = P_ij * keep_ij / (1 - p), zero exactly where the GPU dropped). Slopes are small
    /// enough that no visible P underflows in bf16.
    /// </summary>
    [Theory]
    [InlineData(0.3f, false, false)]
    [InlineData(0.1f, true, true)]
    public void AlibiDropoutMaskEqualsTheCpuSpecificationBitForBit(float probability, bool causal, bool perBatch)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        const int batch = 2, seqlenQ = 77, seqlenK = 64, heads = 3, headDim = 64;
        var random = new TestRandom();
        var state = random.NextDropoutState();
        var slopes = perBatch
            ? Tensor.Create(random.Uniform(batch * heads, 0.01f, 0.1f), [batch, heads])
            : Tensor.Create(random.Uniform(heads, 0.01f, 0.1f), [heads]);
        var q = Precision<BFloat16>.FromFloats(random.Normal((long)batch * seqlenQ * heads * headDim, 0.5f));
        var k = Precision<BFloat16>.FromFloats(random.Normal((long)batch * seqlenK * heads * headDim, 0.5f));
        var v = new BFloat16[batch * seqlenK * heads * headDim];
        for (int b = 0; b < batch; b++)
            for (int j = 0; j < seqlenK; j++)
                for (int h = 0; h < heads; h++)
                    v[((b * seqlenK + j) * heads + h) * headDim + j] = (BFloat16)1f;
        using var dq = CudaTensor<BFloat16>.FromHost(Tensor.Create(q, [batch, seqlenQ, heads, headDim]), device);
        using var dk = CudaTensor<BFloat16>.FromHost(Tensor.Create(k, [batch, seqlenK, heads, headDim]), device);
        using var dv = CudaTensor<BFloat16>.FromHost(Tensor.Create(v, [batch, seqlenK, heads, headDim]), device);
        var options = new AttentionOptions { DropoutProbability = probability, DropoutState = state, Causal = causal, AlibiSlopes = slopes };
        using var result = FlashAttention.Forward(dq, dk, dv, options);
        Assert.Equal(state, result.DropoutState);
        var output = result.Output.ToHost();

        var mask = new DropoutMask(probability, state, heads);
        var settings = AttentionSettings.Resolve(options, ProblemShape.Fixed(batch, seqlenQ, seqlenK, heads, heads, headDim), state);
        string context = $"[{Describe.Options(options)} {random}]";
        int compared = 0, dropped = 0;
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < seqlenQ; i++)
                    for (int j = 0; j < seqlenK; j++)
                    {
                        if (!settings.IsVisible(i, j, seqlenQ, seqlenK)) continue;
                        bool gpuKept = (float)output[b, i, h, j] != 0f;
                        bool cpuKept = mask.IsKept(b, h, i, j);
                        if (gpuKept != cpuKept)
                            Assert.Fail($"mask differs at batch {b} head {h} row {i} col {j}: GPU {(gpuKept ? "kept" : "dropped")}, CPU {(cpuKept ? "kept" : "dropped")}. {context}");
                        compared++;
                        if (!cpuKept) dropped++;
                    }
        Assert.True(compared > 1000 && dropped > 0, $"compared {compared}, dropped {dropped}. {context}");
    }

    [Theory]
    [InlineData(Dtype.Fp16, 128, "softcap")]
    [InlineData(Dtype.Bf16, 64, "alibi")]
    [InlineData(Dtype.Bf16, 256, "softcap+alibi")]
    [InlineData(Dtype.Fp16, 40, "alibi+dropout")]
    public void DeterministicBackwardWithModifiersIsBitwiseRepeatable(Dtype dtype, int headDim, string modifiers)
    {
        GpuRequirement.SkipIfUnavailable();
        if (dtype == Dtype.Fp16) CheckRepeatable<Half>(headDim, modifiers);
        else CheckRepeatable<BFloat16>(headDim, modifiers);
    }

    [Fact]
    public void SoftcapWithDropoutIsRejectedBeforeAnyWork()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([1, 8, 2, 64], device);
        using var output = CudaTensor<Half>.Allocate([1, 8, 2, 64], device);
        using var lse = CudaTensor<float>.Allocate([1, 2, 8], device);
        q.Fill(0);
        lse.Fill(0xFF);
        var options = new AttentionOptions { Softcap = 5f, DropoutProbability = 0.1f, DropoutState = new DropoutState(1, 2) };
        Assert.Equal("options.Softcap", Assert.Throws<ArgumentException>(() => FlashAttention.Forward(q, q, q, options)).ParamName);
        Assert.Equal("options.Softcap", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardInto(q, q, q, output, lse, options)).ParamName);
        Assert.Equal("options.Softcap", Assert.Throws<ArgumentException>(() => FlashAttention.Backward(q, q, q, q, q, lse, options, options.DropoutState)).ParamName);
        Assert.All(Values(lse.ToHost()), x => Assert.True(float.IsNaN(x), $"LSE was written: {x}"));
    }

    [Fact]
    public void AlibiSlopesOfTheWrongShapeAreRejected()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([2, 8, 4, 64], device);
        using var k = CudaTensor<Half>.Allocate([2, 8, 2, 64], device);
        foreach (var slopes in new[] { Tensor.Create(new float[3], [3]), Tensor.Create(new float[12], [3, 4]), Tensor.Create(new float[8], [2, 2, 2]) })
        {
            var error = Assert.Throws<ArgumentException>(() => FlashAttention.Forward(q, k, k, new AttentionOptions { AlibiSlopes = slopes }));
            Assert.Equal("options.AlibiSlopes", error.ParamName);
        }
    }

    /// <summary>Forward and backward on the GPU against the reference, the options drawn from the inputs' random source (so the
    /// printed seed replays slopes and dropout state too).</summary>
    private static void Check(Dtype dtype, Problem problem, Func<TestRandom, AttentionOptions> makeOptions)
    {
        var random = new TestRandom();
        var options = makeOptions(random);
        if (dtype == Dtype.Fp16) Check(Inputs<Half>.Create(problem, random), options);
        else Check(Inputs<BFloat16>.Create(problem, random), options);
    }

    private static AttentionGradients<T> Check<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged =>
        AttentionCheck.Backward<T>(inputs.Problem, options, inputs, ForwardPoisoned, CudaBackwardTests.BackwardOnGpu);

    private static void CheckRepeatable<T>(int headDim, string modifiers) where T : unmanaged
    {
        var random = new TestRandom();
        var problem = new Problem(2, 200, 170, 4, 2, headDim);
        var options = new AttentionOptions { Deterministic = true, Causal = true };
        foreach (var modifier in modifiers.Split('+'))
            options = modifier switch
            {
                "softcap" => options with { Softcap = 5f, SoftmaxScale = SaturatingScale(5f, headDim) },
                "alibi" => options with { AlibiSlopes = Slopes(random, 2, 4) },
                "dropout" => options with { DropoutProbability = 0.2f, DropoutState = random.NextDropoutState() },
                _ => throw new ArgumentException($"unknown modifier {modifier}", nameof(modifiers)),
            };
        var inputs = Inputs<T>.Create(problem, random);
        var first = Bits(Check(inputs, options));
        var forward = ForwardPoisoned(inputs, options);
        for (int run = 0; run < 3; run++)
        {
            var again = Bits(CudaBackwardTests.BackwardOnGpu(inputs, options, forward));
            Assert.True(first.AsSpan().SequenceEqual(again), $"run {run} differs from the first. {AttentionCheck.Context<T>(problem, options, random)}");
        }
    }

    /// <summary>The softmax scale that gives scale * QK^T (unit-normal q and k) a standard deviation of one cap.</summary>
    internal static float SaturatingScale(float cap, int headDim) => cap / MathF.Sqrt(headDim);

    /// <summary>Random slopes in [0.05, 0.5): shape (heads) when <paramref name="batch"/> is 0, else (batch, heads).</summary>
    internal static Tensor<float> Slopes(TestRandom random, int batch, int heads) => batch == 0
        ? Tensor.Create(random.Uniform(heads, 0.05f, 0.5f), [heads])
        : Tensor.Create(random.Uniform(batch * heads, 0.05f, 0.5f), [batch, heads]);

    /// <summary>Uploads q, k, v, poisons caller-owned O and LSE, runs ForwardInto and downloads.</summary>
    private static AttentionResult<T> ForwardPoisoned<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged =>
        DeviceInputs.Uploaded(inputs, (q, k, v) =>
        {
            var p = inputs.Problem;
            using var output = CudaTensor<T>.Allocate(p.QLengths, q.Device);
            using var lse = CudaTensor<float>.Allocate(p.LseLengths, q.Device);
            output.Fill(0xFF);
            lse.Fill(0xFF);
            var state = FlashAttention.ForwardInto(q, k, v, output, lse, options);
            Assert.Equal(options.DropoutProbability > 0 ? options.DropoutState : null, state);
            return new AttentionResult<T>(output.ToHost(), lse.ToHost(), state, null);
        });

    private static ushort[] Bits<T>(AttentionGradients<T> grads) where T : unmanaged =>
        [.. Bits(grads.DQ), .. Bits(grads.DK), .. Bits(grads.DV)];

    private static ushort[] Bits<T>(Tensor<T> tensor) where T : unmanaged
    {
        var values = new T[tensor.FlattenedLength];
        tensor.FlattenTo(values);
        return MemoryMarshal.Cast<T, ushort>(values).ToArray();
    }

    private static float[] Values(Tensor<float> tensor)
    {
        var flat = new float[tensor.FlattenedLength];
        tensor.FlattenTo(flat);
        return flat;
    }
}
