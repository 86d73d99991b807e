using System.Runtime.InteropServices;
using FlashAttn.Cuda;
using FlashAttn.Reference;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The CUDA varlen API (device cu_seqlens, flash-attn's <c>flash_attn_varlen_func</c>): O, LSE, dQ, dK and dV against the float64
/// reference run per sequence (tolerance rule, batch index = sequence index for ALiBi and dropout, as <see cref="VarlenTests"/>
/// does for the CPU path), and against the CPU ForwardVarlen/BackwardVarlen on the same inputs, options and dropout state.
/// Random lengths always include an empty query sequence (its keys must get dK = dV = 0), an empty key sequence (O = 0,
/// LSE = +inf, dQ = 0), a single query, one sequence longer than 256, lengths that are not multiples of 64 and
/// seqlen_q != seqlen_k. Gradients are written into poisoned (NaN) tensors.
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaVarlenTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<Dtype, int, int, int, string> Cases => new()
    {
        // dtype, head dim, heads_q, heads_kv, options ('+'-separated)
        { Dtype.Fp16, 64, 4, 4, "plain" },
        { Dtype.Bf16, 40, 4, 2, "causal" },              // head dim padded 40 -> 64, GQA
        { Dtype.Fp16, 128, 4, 1, "window" },             // MQA
        { Dtype.Bf16, 256, 2, 2, "causal" },             // the wide backward kernel
        { Dtype.Fp16, 160, 2, 1, "window" },             // bucket 192
        { Dtype.Fp16, 40, 4, 2, "softcap" },
        { Dtype.Bf16, 128, 4, 2, "softcap+causal" },
        { Dtype.Fp16, 64, 4, 2, "alibi" },               // (batch, heads) slopes: one row per sequence
        { Dtype.Bf16, 256, 2, 1, "alibi+window" },
        { Dtype.Bf16, 40, 4, 2, "softcap+alibi+causal" },
        { Dtype.Fp16, 128, 4, 2, "alibi+dropout" },
        { Dtype.Bf16, 64, 2, 1, "dropout+causal" },
        { Dtype.Fp16, 256, 2, 1, "dropout" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void VarlenMatchesTheCpuPathAndThePerSequenceReference(Dtype dtype, int headDim, int headsQ, int headsKv, string options)
    {
        GpuRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        var problem = VarlenProblem.Random(random, headsQ, headsKv, headDim);
        if (dtype == Dtype.Fp16) Check(VarlenInputs<Half>.Create(problem, random), OptionsFor(options, problem.Batch, headsQ, headDim, random), OnGpu);
        else Check(VarlenInputs<BFloat16>.Create(problem, random), OptionsFor(options, problem.Batch, headsQ, headDim, random), OnGpu);
    }

    [Theory]
    [InlineData(Dtype.Fp16, 128, "causal")]
    [InlineData(Dtype.Bf16, 64, "alibi+dropout+causal")]
    [InlineData(Dtype.Fp16, 256, "softcap+window")]
    [InlineData(Dtype.Bf16, 40, "softcap+alibi")]
    public void DeterministicVarlenBackwardIsBitwiseRepeatable(Dtype dtype, int headDim, string options)
    {
        GpuRequirement.SkipIfUnavailable();
        if (dtype == Dtype.Fp16) CheckRepeatable<Half>(headDim, options);
        else CheckRepeatable<BFloat16>(headDim, options);
    }

    /// <summary>Varlen over strided views of one (total, 3, heads, d) device allocation, dQKV into views of another: no copies.
    /// Checked like the separate-tensor case, and bit for bit against it (deterministic backward).</summary>
    [Theory]
    [InlineData(Dtype.Bf16, 64, "causal+dropout+deterministic")]
    [InlineData(Dtype.Fp16, 40, "alibi+window+deterministic")]  // head dim bucket 64
    public void PackedQkvViewsEqualSeparateTensors(Dtype dtype, int headDim, string options)
    {
        GpuRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        var problem = VarlenProblem.RandomSelf(random, 3, headDim);
        var o = OptionsFor(options, problem.Batch, 3, headDim, random);
        if (dtype == Dtype.Fp16) CheckPackedAgainstSeparate(VarlenInputs<Half>.Create(problem, random), o, OnGpuPackedQkv);
        else CheckPackedAgainstSeparate(VarlenInputs<BFloat16>.Create(problem, random), o, OnGpuPackedQkv);
    }

    /// <summary>q separate, k and v strided views of one (total_k, 2, heads_kv, d) allocation, dKV into views of another.</summary>
    [Theory]
    [InlineData(Dtype.Fp16, 64, "softcap+causal+deterministic")]
    [InlineData(Dtype.Bf16, 59, "dropout+deterministic")]  // odd head dim: staged through padded copies read from and written to the views
    public void PackedKvViewsEqualSeparateTensors(Dtype dtype, int headDim, string options)
    {
        GpuRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        var problem = VarlenProblem.Random(random, 4, 2, headDim);
        var o = OptionsFor(options, problem.Batch, 4, headDim, random);
        if (dtype == Dtype.Fp16) CheckPackedAgainstSeparate(VarlenInputs<Half>.Create(problem, random), o, OnGpuPackedKv);
        else CheckPackedAgainstSeparate(VarlenInputs<BFloat16>.Create(problem, random), o, OnGpuPackedKv);
    }

    /// <summary>
    /// A fixed-length batch viewed as varlen (the same device memory: (batch, seqlen, heads, d) is (batch * seqlen, heads, d), offsets
    /// 0, seqlen, 2 seqlen, ...) gives the fixed-length kernels' results to within two ulps (the same kernels on the same tiles; only
    /// addressing differs). Deterministic, so dQ is reduced in the same order on both paths.
    /// </summary>
    [Theory]
    [InlineData(Dtype.Fp16, 150, 150, 64, "causal")]
    [InlineData(Dtype.Bf16, 150, 97, 40, "alibi+dropout+window")]
    [InlineData(Dtype.Fp16, 97, 150, 256, "softcap+causal")]
    public void EqualLengthVarlenEqualsFixedLength(Dtype dtype, int seqlenQ, int seqlenK, int headDim, string options)
    {
        GpuRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        var problem = new Problem(3, seqlenQ, seqlenK, 4, 2, headDim);
        var o = OptionsFor(options + "+deterministic", problem.Batch, problem.HeadsQ, headDim, random);
        if (dtype == Dtype.Fp16) CheckVarlenEqualsFixed(Inputs<Half>.Create(problem, random), o);
        else CheckVarlenEqualsFixed(Inputs<BFloat16>.Create(problem, random), o);
    }

    /// <summary>maxSeqlen only sizes the grid: a looser bound (up to the token count) gives the same forward, bit for bit.</summary>
    [Fact]
    public void LooserMaxSeqlenGivesTheSameForward()
    {
        GpuRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        var problem = VarlenProblem.Random(random, 4, 2, 64);
        var inputs = VarlenInputs<Half>.Create(problem, random);
        var options = new AttentionOptions { Causal = true, WindowLeft = 50 };
        using var q = CudaTensor<Half>.FromHost(inputs.QTensor);
        using var k = CudaTensor<Half>.FromHost(inputs.KTensor);
        using var v = CudaTensor<Half>.FromHost(inputs.VTensor);
        using var cuQ = Offsets(problem.CuQ);
        using var cuK = Offsets(problem.CuK);
        using var tight = FlashAttention.ForwardVarlen(q, k, v, cuQ, cuK, problem.MaxQ, problem.MaxK, options);
        using var loose = FlashAttention.ForwardVarlen(q, k, v, cuQ, cuK, problem.TotalQ, problem.TotalK, options);
        string context = Context<Half>(problem, options, random);
        Tolerance.AssertIdentical("O", Bits(tight.Output.ToHost()), Bits(loose.Output.ToHost()), context);
        Tolerance.AssertIdentical("LSE", Values(tight.LogSumExp.ToHost()), Values(loose.LogSumExp.ToHost()), context);
    }

    [Fact]
    public void EmptyWorkLaunchesNothingAndZeroesKeyGradients()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        // No sequences at all.
        using (var none = CudaTensor<Half>.Allocate([0, 2, 64], device))
        using (var cu = Offsets([0]))
        using (var result = FlashAttention.ForwardVarlen(none, none, none, cu, cu, 0, 0))
        {
            Assert.Equal([0, 2, 64], result.Output.Lengths.ToArray());
            Assert.Equal([2, 0], result.LogSumExp.Lengths.ToArray());
            using var grads = FlashAttention.BackwardVarlen(none, none, none, none, result.Output, result.LogSumExp, cu, cu, 0, 0);
            Assert.Equal([0, 2, 64], grads.DK.Lengths.ToArray());
        }

        // Every query sequence empty, keys present: O and LSE are empty, and no query sees a key, so dK = dV = 0.
        var random = new TestRandom();
        using var q = CudaTensor<Half>.Allocate([0, 4, 40], device);
        using var k = CudaTensor<Half>.FromHost(Tensor.Create(Precision<Half>.FromFloats(random.Normal(50 * 2 * 40)), [50, 2, 40]), device);
        using var v = CudaTensor<Half>.FromHost(Tensor.Create(Precision<Half>.FromFloats(random.Normal(50 * 2 * 40)), [50, 2, 40]), device);
        using var cuQ = Offsets([0, 0, 0]);
        using var cuK = Offsets([0, 20, 50]);
        using var forward = FlashAttention.ForwardVarlen(q, k, v, cuQ, cuK, 0, 30);
        Assert.Equal([0, 4, 40], forward.Output.Lengths.ToArray());
        Assert.Equal([4, 0], forward.LogSumExp.Lengths.ToArray());
        using var dq = CudaTensor<Half>.Allocate([0, 4, 40], device);
        using var dk = Poisoned<Half>([50, 2, 40]);
        using var dv = Poisoned<Half>([50, 2, 40]);
        FlashAttention.BackwardVarlenInto(q, q, k, v, forward.Output, forward.LogSumExp, cuQ, cuK, 0, 30, dq, dk, dv);
        Assert.All(Values(dk.ToHost()), x => Assert.True(BitConverter.HalfToInt16Bits(x) == 0, $"dK = {x}, expected +0. [{random}]"));
        Assert.All(Values(dv.ToHost()), x => Assert.True(BitConverter.HalfToInt16Bits(x) == 0, $"dV = {x}, expected +0. [{random}]"));
    }

    // Validation: these need a GPU only to allocate the device tensors; every rejection comes before any launch.

    [Fact]
    public void OffsetsThatAreNotAVectorAreRejected()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([10, 2, 64], device);
        using var good = Offsets([0, 4, 10]);
        using var empty = CudaTensor<int>.Allocate([0], device);
        using var matrix = CudaTensor<int>.Allocate([1, 3], device);
        Assert.Equal("cuSeqlensQ", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardVarlen(q, q, q, empty, good, 6, 6)).ParamName);
        Assert.Equal("cuSeqlensQ", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardVarlen(q, q, q, matrix, good, 6, 6)).ParamName);
        Assert.Equal("cuSeqlensK", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardVarlen(q, q, q, good, matrix, 6, 6)).ParamName);
    }

    [Fact]
    public void MismatchedOffsetCountsAreRejected()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([10, 2, 64], device);
        using var three = Offsets([0, 4, 10]);
        using var four = Offsets([0, 4, 8, 10]);
        Assert.Equal("cuSeqlensK", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardVarlen(q, q, q, three, four, 6, 6)).ParamName);
        Assert.Equal("cuSeqlensK", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardVarlen(q, q, q, four, three, 6, 6)).ParamName);
        // (batch, heads) ALiBi slopes must have one row per sequence: 2 sequences here.
        var slopes = Tensor.Create(new float[3 * 2], [3, 2]);
        Assert.Equal("options.AlibiSlopes", Assert.Throws<ArgumentException>(() =>
            FlashAttention.ForwardVarlen(q, q, q, three, three, 6, 6, new AttentionOptions { AlibiSlopes = slopes })).ParamName);
    }

    [Fact]
    public void MaxSeqlenOutsideTheTokenCountIsRejected()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([10, 2, 64], device);
        using var k = CudaTensor<Half>.Allocate([12, 2, 64], device);
        using var cuQ = Offsets([0, 4, 10]);
        using var cuK = Offsets([0, 5, 12]);
        Assert.Equal("maxSeqlenQ", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardVarlen(q, k, k, cuQ, cuK, 11, 7)).ParamName);
        Assert.Equal("maxSeqlenQ", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardVarlen(q, k, k, cuQ, cuK, -1, 7)).ParamName);
        Assert.Equal("maxSeqlenK", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardVarlen(q, k, k, cuQ, cuK, 6, 13)).ParamName);
    }

    [Fact]
    public void TensorsOfTheWrongRankOrTypeAreRejected()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([10, 2, 64], device);
        using var flat = CudaTensor<Half>.Allocate([10, 128], device);
        using var fixedLength = CudaTensor<Half>.Allocate([1, 10, 2, 64], device);
        using var single = CudaTensor<float>.Allocate([10, 2, 64], device);
        using var kOtherDim = CudaTensor<Half>.Allocate([10, 2, 32], device);
        using var cu = Offsets([0, 4, 10]);
        Assert.Equal("q", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardVarlen(flat, q, q, cu, cu, 6, 6)).ParamName);
        Assert.Equal("k", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardVarlen(q, fixedLength, q, cu, cu, 6, 6)).ParamName);
        Assert.Equal("k", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardVarlen(q, kOtherDim, kOtherDim, cu, cu, 6, 6)).ParamName);
        Assert.Equal("q", Assert.Throws<ArgumentException>(() => FlashAttention.ForwardVarlen(single, single, single, cu, cu, 6, 6)).ParamName);
    }

    [Fact]
    public void OptionsTheVarlenKernelsRefuseAreRejected()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([10, 2, 64], device);
        using var cu = Offsets([0, 4, 10]);
        var probabilities = Assert.Throws<ArgumentException>(() =>
            FlashAttention.ForwardVarlen(q, q, q, cu, cu, 6, 6, new AttentionOptions { ReturnProbabilities = true }));
        Assert.Equal("options", probabilities.ParamName);
        Assert.Equal("options.Softcap", Assert.Throws<ArgumentException>(() =>
            FlashAttention.ForwardVarlen(q, q, q, cu, cu, 6, 6, new AttentionOptions { Softcap = 5f, DropoutProbability = 0.1f })).ParamName);
    }

    [Fact]
    public void BackwardVarlenRejectsBadArgumentsBeforeWriting()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([10, 2, 64], device);
        using var cu = Offsets([0, 4, 10]);
        using var lse = CudaTensor<float>.Allocate([2, 10], device);
        using var fixedLse = CudaTensor<float>.Allocate([2, 2, 6], device);
        using var dq = Poisoned<Half>([10, 2, 64]);
        using var dk = Poisoned<Half>([10, 2, 64]);
        using var dv = Poisoned<Half>([10, 2, 64]);
        using var shortDv = Poisoned<Half>([9, 2, 64]);
        q.Fill(0);
        lse.Fill(0);
        Assert.Equal("logSumExp", Assert.Throws<ArgumentException>(() =>
            FlashAttention.BackwardVarlenInto(q, q, q, q, q, fixedLse, cu, cu, 6, 6, dq, dk, dv)).ParamName);
        Assert.Equal("dv", Assert.Throws<ArgumentException>(() =>
            FlashAttention.BackwardVarlenInto(q, q, q, q, q, lse, cu, cu, 6, 6, dq, dk, shortDv)).ParamName);
        Assert.Equal("dropoutState", Assert.Throws<ArgumentException>(() =>
            FlashAttention.BackwardVarlenInto(q, q, q, q, q, lse, cu, cu, 6, 6, dq, dk, dv, new AttentionOptions { DropoutProbability = 0.1f })).ParamName);
        foreach (var gradient in new[] { dq, dk, dv })
            Assert.All(Values(gradient.ToHost()), x => Assert.True(Half.IsNaN(x), $"a gradient was written: {x}"));
    }

    // ---- the checks ----

    private delegate VarlenRun<T> GpuRun<T>(VarlenInputs<T> inputs, AttentionOptions options) where T : unmanaged;

    /// <summary>GPU against the per-sequence reference (tolerance rule) and against the CPU varlen path on the same inputs.</summary>
    private static VarlenRun<T> Check<T>(VarlenInputs<T> inputs, AttentionOptions options, GpuRun<T> runOnGpu) where T : unmanaged
    {
        var p = inputs.Problem;
        string context = Context<T>(p, options, inputs.Random);
        var gpu = runOnGpu(inputs, options);
        Assert.Equal(options.DropoutProbability > 0 ? options.DropoutState : null, gpu.DropoutState);
        Assert.Equal(p.QLengths, gpu.Output.Lengths.ToArray());
        Assert.Equal(p.LseLengths, gpu.LogSumExp.Lengths.ToArray());
        Assert.Equal(p.QLengths, gpu.DQ.Lengths.ToArray());
        Assert.Equal(p.KvLengths, gpu.DK.Lengths.ToArray());
        Assert.Equal(p.KvLengths, gpu.DV.Lengths.ToArray());

        var cpuForward = FlashAttention.ForwardVarlen<T>(inputs.QTensor, inputs.KTensor, inputs.VTensor, p.CuQ, p.CuK, p.MaxQ, p.MaxK, options, Ct);
        Assert.Equal(gpu.DropoutState, cpuForward.DropoutState);
        var cpuGrads = FlashAttention.BackwardVarlen<T>(inputs.DOutTensor, inputs.QTensor, inputs.KTensor, inputs.VTensor, cpuForward.Output,
            cpuForward.LogSumExp, p.CuQ, p.CuK, p.MaxQ, p.MaxK, options, cpuForward.DropoutState, Ct);

        var expected = VarlenExpected.Compute(inputs, options, gpu.DropoutState);
        double u = Precision<T>.FloorUnit;
        (string Name, double[] Gpu, double[] Cpu, double[] Ref64, double[] Naive)[] comparisons =
        [
            ("O", Precision<T>.Flatten(gpu.Output), Precision<T>.Flatten(cpuForward.Output), expected.O64, expected.ONaive),
            ("LSE", Flat.Of(gpu.LogSumExp), Flat.Of(cpuForward.LogSumExp), expected.Lse64, expected.LseNaive),
            ("dQ", Precision<T>.Flatten(gpu.DQ), Precision<T>.Flatten(cpuGrads.DQ), expected.DQ64, expected.DQNaive),
            ("dK", Precision<T>.Flatten(gpu.DK), Precision<T>.Flatten(cpuGrads.DK), expected.DK64, expected.DKNaive),
            ("dV", Precision<T>.Flatten(gpu.DV), Precision<T>.Flatten(cpuGrads.DV), expected.DV64, expected.DVNaive),
        ];
        foreach (var (name, g, c, r, n) in comparisons)
        {
            Tolerance.AssertClose(name, g, r, n, u, context);
            AssertAgree(name + " (GPU vs CPU)", g, c, r, n, u, context);
        }
        return gpu;
    }

    /// <summary>
    /// GPU against CPU: each lies within the tolerance rule's bound B = 2 * max|naive - ref64| + u * max(1, max|ref64|) of the
    /// reference, so they must agree to within 2B; infinite entries (LSE of rows that see no key) must be equal.
    /// </summary>
    private static void AssertAgree(string what, double[] gpu, double[] cpu, double[] ref64, double[] naive, double floorUnit, string context)
    {
        Assert.Equal(ref64.Length, gpu.Length);
        Assert.Equal(ref64.Length, cpu.Length);
        double maxRef = 0, naiveError = 0;
        for (int i = 0; i < ref64.Length; i++)
        {
            if (double.IsInfinity(ref64[i])) continue;
            maxRef = Math.Max(maxRef, Math.Abs(ref64[i]));
            if (!double.IsInfinity(naive[i])) naiveError = Math.Max(naiveError, Math.Abs(naive[i] - ref64[i]));
        }
        double bound = 2 * (2 * naiveError + floorUnit * Math.Max(1, maxRef));
        for (int i = 0; i < gpu.Length; i++)
        {
            double g = gpu[i], c = cpu[i];
            bool exact = !double.IsFinite(g) || !double.IsFinite(c) || double.IsInfinity(ref64[i]);
            if (exact ? !g.Equals(c) : Math.Abs(g - c) > bound)
                Assert.Fail($"{what}: element {i}: GPU {g:R}, CPU {c:R}, ref64 {ref64[i]:R}, allowed |GPU - CPU| <= {bound:G6}. {context}");
        }
    }

    private static void CheckRepeatable<T>(int headDim, string name) where T : unmanaged
    {
        var random = new TestRandom();
        var problem = VarlenProblem.Random(random, 4, 2, headDim);
        var options = OptionsFor(name + "+deterministic", problem.Batch, 4, headDim, random);
        var inputs = VarlenInputs<T>.Create(problem, random);
        var first = Check(inputs, options, OnGpu);
        string context = Context<T>(problem, options, random);

        using var q = CudaTensor<T>.FromHost(inputs.QTensor);
        using var k = CudaTensor<T>.FromHost(inputs.KTensor);
        using var v = CudaTensor<T>.FromHost(inputs.VTensor);
        using var dOut = CudaTensor<T>.FromHost(inputs.DOutTensor);
        using var cuQ = Offsets(problem.CuQ);
        using var cuK = Offsets(problem.CuK);
        using var forward = FlashAttention.ForwardVarlen(q, k, v, cuQ, cuK, problem.MaxQ, problem.MaxK, options);
        Tolerance.AssertIdentical("O (repeated forward)", Bits(forward.Output.ToHost()), Bits(first.Output), context);
        for (int run = 0; run < 3; run++)
        {
            using var grads = FlashAttention.BackwardVarlen(dOut, q, k, v, forward.Output, forward.LogSumExp, cuQ, cuK, problem.MaxQ, problem.MaxK,
                options, forward.DropoutState);
            Tolerance.AssertIdentical($"dQ (run {run})", Bits(grads.DQ.ToHost()), Bits(first.DQ), context);
            Tolerance.AssertIdentical($"dK (run {run})", Bits(grads.DK.ToHost()), Bits(first.DK), context);
            Tolerance.AssertIdentical($"dV (run {run})", Bits(grads.DV.ToHost()), Bits(first.DV), context);
        }
    }

    private static void CheckPackedAgainstSeparate<T>(VarlenInputs<T> inputs, AttentionOptions options, GpuRun<T> packed) where T : unmanaged
    {
        Assert.True(options.Deterministic, "bitwise comparison of gradients needs the deterministic backward");
        var viaViews = Check(inputs, options, packed);
        var separate = OnGpu(inputs, options);
        string context = Context<T>(inputs.Problem, options, inputs.Random);
        Tolerance.AssertIdentical("O", Bits(viaViews.Output), Bits(separate.Output), context);
        Tolerance.AssertIdentical("LSE", Values(viaViews.LogSumExp), Values(separate.LogSumExp), context);
        Tolerance.AssertIdentical("dQ", Bits(viaViews.DQ), Bits(separate.DQ), context);
        Tolerance.AssertIdentical("dK", Bits(viaViews.DK), Bits(separate.DK), context);
        Tolerance.AssertIdentical("dV", Bits(viaViews.DV), Bits(separate.DV), context);
    }

    private static void CheckVarlenEqualsFixed<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged
    {
        var p = inputs.Problem;
        string context = AttentionCheck.Context<T>(p, options, inputs.Random);
        int[] cuQ = Enumerable.Range(0, p.Batch + 1).Select(b => b * p.SeqlenQ).ToArray();
        int[] cuK = Enumerable.Range(0, p.Batch + 1).Select(b => b * p.SeqlenK).ToArray();
        nint[] qTokens = [p.Batch * p.SeqlenQ, p.HeadsQ, p.HeadDim], kTokens = [p.Batch * p.SeqlenK, p.HeadsKv, p.HeadDim];

        using var q = CudaTensor<T>.FromHost(inputs.QTensor);
        using var k = CudaTensor<T>.FromHost(inputs.KTensor);
        using var v = CudaTensor<T>.FromHost(inputs.VTensor);
        using var dOut = CudaTensor<T>.FromHost(inputs.DOutTensor);
        using var qv = CudaTensor<T>.View(q.DevicePointer, qTokens);
        using var kv = CudaTensor<T>.View(k.DevicePointer, kTokens);
        using var vv = CudaTensor<T>.View(v.DevicePointer, kTokens);
        using var dOutView = CudaTensor<T>.View(dOut.DevicePointer, qTokens);
        using var cuQDevice = Offsets(cuQ);
        using var cuKDevice = Offsets(cuK);

        using var fixedForward = FlashAttention.Forward(q, k, v, options);
        using var fixedGrads = FlashAttention.Backward(dOut, q, k, v, fixedForward.Output, fixedForward.LogSumExp, options, fixedForward.DropoutState);
        using var varlenForward = FlashAttention.ForwardVarlen(qv, kv, vv, cuQDevice, cuKDevice, p.SeqlenQ, p.SeqlenK, options);
        using var varlenGrads = FlashAttention.BackwardVarlen(dOutView, qv, kv, vv, varlenForward.Output, varlenForward.LogSumExp, cuQDevice, cuKDevice,
            p.SeqlenQ, p.SeqlenK, options, varlenForward.DropoutState);
        Assert.Equal(fixedForward.DropoutState, varlenForward.DropoutState);

        // O and the gradients have the same memory order on both paths; the LSE is (batch, heads, seqlen_q) against (heads, total_q).
        AssertWithinUlps("O", varlenForward.Output.ToHost(), fixedForward.Output.ToHost(), 2, context);
        AssertWithinUlps("dQ", varlenGrads.DQ.ToHost(), fixedGrads.DQ.ToHost(), 2, context);
        AssertWithinUlps("dK", varlenGrads.DK.ToHost(), fixedGrads.DK.ToHost(), 2, context);
        AssertWithinUlps("dV", varlenGrads.DV.ToHost(), fixedGrads.DV.ToHost(), 2, context);
        var fixedLse = fixedForward.LogSumExp.ToHost();
        var varlenLse = varlenForward.LogSumExp.ToHost();
        var permuted = new float[fixedLse.FlattenedLength];
        for (int b = 0; b < p.Batch; b++)
            for (int h = 0; h < p.HeadsQ; h++)
                for (int i = 0; i < p.SeqlenQ; i++)
                    permuted[(h * p.Batch + b) * p.SeqlenQ + i] = fixedLse[b, h, i];
        var varlenValues = Values(varlenLse);
        for (int i = 0; i < permuted.Length; i++)
        {
            float a = varlenValues[i], e = permuted[i];
            bool same = float.IsFinite(e) ? Math.Abs(BitConverter.SingleToInt32Bits(a) - (long)BitConverter.SingleToInt32Bits(e)) <= 4 : a.Equals(e);
            if (!same) Assert.Fail($"LSE element {i}: varlen {a:R}, fixed {e:R}. {context}");
        }
    }

    /// <summary>Half or BFloat16 values at most <paramref name="ulps"/> units in the last place apart, neither NaN.</summary>
    private static void AssertWithinUlps<T>(string what, Tensor<T> actual, Tensor<T> expected, int ulps, string context) where T : unmanaged
    {
        T[] a = Values(actual), e = Values(expected);
        Assert.Equal(e.Length, a.Length);
        ReadOnlySpan<ushort> aBits = MemoryMarshal.Cast<T, ushort>(a), eBits = MemoryMarshal.Cast<T, ushort>(e);
        static int Ordered(ushort bits) => (bits & 0x8000) != 0 ? -(bits & 0x7FFF) : bits; // sign-magnitude to a monotonic integer
        for (int i = 0; i < a.Length; i++)
        {
            float x = Precision<T>.ToFloat(a[i]), y = Precision<T>.ToFloat(e[i]);
            if (float.IsNaN(x) || float.IsNaN(y) || Math.Abs(Ordered(aBits[i]) - Ordered(eBits[i])) > ulps)
                Assert.Fail($"{what}: element {i}: varlen {x:R}, fixed {y:R} (more than {ulps} ulps apart). {context}");
        }
    }

    // ---- GPU runners ----

    private static VarlenRun<T> OnGpu<T>(VarlenInputs<T> inputs, AttentionOptions options) where T : unmanaged
    {
        var p = inputs.Problem;
        using var q = CudaTensor<T>.FromHost(inputs.QTensor);
        using var k = CudaTensor<T>.FromHost(inputs.KTensor);
        using var v = CudaTensor<T>.FromHost(inputs.VTensor);
        using var dq = Poisoned<T>(p.QLengths);
        using var dk = Poisoned<T>(p.KvLengths);
        using var dv = Poisoned<T>(p.KvLengths);
        return RunOnDevice(inputs, options, q, k, v, dq, dk, dv);
    }

    /// <summary>q, k, v as strided views of one (total, 3, heads, d) allocation; dq, dk, dv as views of a poisoned dQKV.</summary>
    private static VarlenRun<T> OnGpuPackedQkv<T>(VarlenInputs<T> inputs, AttentionOptions options) where T : unmanaged
    {
        var p = inputs.Problem;
        Assert.True(p.CuQ.SequenceEqual(p.CuK) && p.HeadsQ == p.HeadsKv, "packed QKV needs the same offsets and heads for q and k");
        using var qkv = CudaTensor<T>.FromHost(Pack(p.TotalQ, p.HeadsQ, p.HeadDim, inputs.Q, inputs.K, inputs.V));
        using var dqkv = Poisoned<T>([p.TotalQ, 3, p.HeadsQ, p.HeadDim]);
        var views = Slices(qkv);
        var gradients = Slices(dqkv);
        try
        {
            Assert.All(views.Concat(gradients), view => Assert.True(view.IsView && !view.IsRowMajor));
            return RunOnDevice(inputs, options, views[0], views[1], views[2], gradients[0], gradients[1], gradients[2]);
        }
        finally
        {
            foreach (var view in views.Concat(gradients)) view.Dispose();
        }
    }

    /// <summary>q separate; k and v as strided views of one (total_k, 2, heads_kv, d) allocation; dk, dv as views of a poisoned dKV.</summary>
    private static VarlenRun<T> OnGpuPackedKv<T>(VarlenInputs<T> inputs, AttentionOptions options) where T : unmanaged
    {
        var p = inputs.Problem;
        using var q = CudaTensor<T>.FromHost(inputs.QTensor);
        using var kv = CudaTensor<T>.FromHost(Pack(p.TotalK, p.HeadsKv, p.HeadDim, inputs.K, inputs.V));
        using var dq = Poisoned<T>(p.QLengths);
        using var dkv = Poisoned<T>([p.TotalK, 2, p.HeadsKv, p.HeadDim]);
        var views = Slices(kv);
        var gradients = Slices(dkv);
        try
        {
            return RunOnDevice(inputs, options, q, views[0], views[1], dq, gradients[0], gradients[1]);
        }
        finally
        {
            foreach (var view in views.Concat(gradients)) view.Dispose();
        }
    }

    /// <summary>ForwardVarlen, then BackwardVarlenInto from the forward's device output and LSE into the given gradient tensors.</summary>
    private static VarlenRun<T> RunOnDevice<T>(VarlenInputs<T> inputs, AttentionOptions options, CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v,
        CudaTensor<T> dq, CudaTensor<T> dk, CudaTensor<T> dv) where T : unmanaged
    {
        var p = inputs.Problem;
        using var dOut = CudaTensor<T>.FromHost(inputs.DOutTensor);
        using var cuQ = Offsets(p.CuQ);
        using var cuK = Offsets(p.CuK);
        using var forward = FlashAttention.ForwardVarlen(q, k, v, cuQ, cuK, p.MaxQ, p.MaxK, options);
        FlashAttention.BackwardVarlenInto(dOut, q, k, v, forward.Output, forward.LogSumExp, cuQ, cuK, p.MaxQ, p.MaxK, dq, dk, dv, options,
            forward.DropoutState);
        return new VarlenRun<T>(forward.Output.ToHost(), forward.LogSumExp.ToHost(), forward.DropoutState, dq.ToHost(), dk.ToHost(), dv.ToHost());
    }

    // ---- helpers ----

    /// <summary>Options from a '+'-separated list; ALiBi slopes are (batch, heads), one row per sequence.</summary>
    private static AttentionOptions OptionsFor(string name, int batch, int headsQ, int headDim, TestRandom random)
    {
        var options = new AttentionOptions();
        foreach (var part in name.Split('+'))
            options = part switch
            {
                "plain" => options,
                "causal" => options with { Causal = true },
                "window" => options with { WindowLeft = 40, WindowRight = 9 },
                "softcap" => options with { Softcap = 5f, SoftmaxScale = CudaScoreModifierTests.SaturatingScale(5f, headDim) },
                "alibi" => options with { AlibiSlopes = CudaScoreModifierTests.Slopes(random, batch, headsQ) },
                "dropout" => options with { DropoutProbability = 0.17f, DropoutState = random.NextDropoutState() },
                "deterministic" => options with { Deterministic = true },
                _ => throw new ArgumentException($"unknown option {part}", nameof(name)),
            };
        return options;
    }

    private static string Context<T>(VarlenProblem problem, AttentionOptions options, TestRandom random) where T : unmanaged =>
        $"[{Precision<T>.Name} varlen {problem} {Describe.Options(options)}{(options.Deterministic ? " deterministic" : "")} {random}]";

    private static CudaTensor<int> Offsets(int[] cumulative) => CudaTensor<int>.FromHost(Tensor.Create(cumulative, [cumulative.Length]));

    private static CudaTensor<T> Poisoned<T>(nint[] lengths) where T : unmanaged
    {
        var tensor = CudaTensor<T>.Allocate(lengths);
        tensor.Fill(0xFF);
        return tensor;
    }

    /// <summary>Interleaves (total, heads, d) arrays into one dense (total, parts, heads, d) host tensor.</summary>
    private static Tensor<T> Pack<T>(int total, int heads, int headDim, params T[][] parts)
    {
        int row = heads * headDim;
        var packed = new T[(long)total * parts.Length * row];
        for (int t = 0; t < total; t++)
            for (int which = 0; which < parts.Length; which++)
                Array.Copy(parts[which], (long)t * row, packed, ((long)t * parts.Length + which) * row, row);
        return Tensor.Create(packed, [total, parts.Length, heads, headDim]);
    }

    /// <summary>Views [:, i] of a dense (total, parts, heads, d) device tensor: (total, heads, d) with row stride parts * heads * d.</summary>
    private static CudaTensor<T>[] Slices<T>(CudaTensor<T> packed) where T : unmanaged
    {
        nint[] lengths = packed.Lengths.ToArray(), strides = packed.Strides.ToArray();
        nint[] viewLengths = [lengths[0], lengths[2], lengths[3]], viewStrides = [strides[0], strides[2], strides[3]];
        var views = new CudaTensor<T>[lengths[1]];
        for (int i = 0; i < views.Length; i++)
            views[i] = CudaTensor<T>.View(packed.DevicePointer + i * strides[1] * CudaTensor<T>.ElementSize, viewLengths, viewStrides);
        return views;
    }

    private static ushort[] Bits<T>(Tensor<T> tensor) where T : unmanaged => MemoryMarshal.Cast<T, ushort>(Values(tensor)).ToArray();

    private static T[] Values<T>(Tensor<T> tensor)
    {
        var flat = new T[tensor.FlattenedLength];
        tensor.FlattenTo(flat);
        return flat;
    }
}

/// <summary>The geometry of one varlen test problem: per-sequence lengths, heads and head dim.</summary>
internal sealed class VarlenProblem
{
    private VarlenProblem(int[] lengthsQ, int[] lengthsK, int headsQ, int headsKv, int headDim)
    {
        LengthsQ = lengthsQ;
        LengthsK = lengthsK;
        HeadsQ = headsQ;
        HeadsKv = headsKv;
        HeadDim = headDim;
        CuQ = Cumulative(lengthsQ);
        CuK = Cumulative(lengthsK);
    }

    public int[] LengthsQ { get; }
    public int[] LengthsK { get; }
    public int HeadsQ { get; }
    public int HeadsKv { get; }
    public int HeadDim { get; }
    public int[] CuQ { get; }
    public int[] CuK { get; }
    public int Batch => LengthsQ.Length;
    public int TotalQ => CuQ[^1];
    public int TotalK => CuK[^1];
    public int MaxQ => LengthsQ.Max();
    public int MaxK => LengthsK.Max();
    public nint[] QLengths => [TotalQ, HeadsQ, HeadDim];
    public nint[] KvLengths => [TotalK, HeadsKv, HeadDim];
    public nint[] LseLengths => [HeadsQ, TotalQ];

    /// <summary>
    /// Six sequences with random lengths, none a multiple of 64 except the empty ones: 0 has seqlen_q &lt; seqlen_k; 1 no
    /// queries; 2 is long (257..320 queries) with seqlen_q &gt; seqlen_k (so causal leaves its leading rows without a key);
    /// 3 no keys; 4 a single query; 5 anything.
    /// </summary>
    public static VarlenProblem Random(TestRandom random, int headsQ, int headsKv, int headDim)
    {
        var r = random.Random;
        int longQ = Ragged(r, 257, 321), q0 = Ragged(r, 10, 80);
        int[] q = [q0, 0, longQ, Ragged(r, 20, 100), 1, Ragged(r, 1, 130)];
        int[] k = [Ragged(r, q0 + 1, q0 + 60), Ragged(r, 1, 50), Ragged(r, 200, longQ), 0, Ragged(r, 2, 90), Ragged(r, 1, 130)];
        return new VarlenProblem(q, k, headsQ, headsKv, headDim);
    }

    /// <summary>Self-attention lengths (the same offsets for q and k, as packed QKV needs): one empty sequence, one long one.</summary>
    public static VarlenProblem RandomSelf(TestRandom random, int heads, int headDim)
    {
        var r = random.Random;
        int[] lengths = [Ragged(r, 2, 100), 0, Ragged(r, 257, 321), 1, Ragged(r, 2, 130)];
        return new VarlenProblem(lengths, [.. lengths], heads, heads, headDim);
    }

    /// <summary>A length in [lo, hi) that is not a multiple of 64.</summary>
    private static int Ragged(Random r, int lo, int hi)
    {
        int n;
        do n = r.Next(lo, hi); while (n % 64 == 0);
        return n;
    }

    private static int[] Cumulative(int[] lengths)
    {
        var cu = new int[lengths.Length + 1];
        for (int i = 0; i < lengths.Length; i++) cu[i + 1] = cu[i] + lengths[i];
        return cu;
    }

    public override string ToString() =>
        $"q=[{string.Join(",", LengthsQ)}] k=[{string.Join(",", LengthsK)}] hq={HeadsQ} hkv={HeadsKv} d={HeadDim}";
}

/// <summary>Random q, k, v and dO of one varlen problem, rounded to the element type.</summary>
internal sealed class VarlenInputs<T> where T : unmanaged
{
    public required VarlenProblem Problem { get; init; }
    public required TestRandom Random { get; init; }
    public required T[] Q { get; init; }
    public required T[] K { get; init; }
    public required T[] V { get; init; }
    public required T[] DOut { get; init; }

    public static VarlenInputs<T> Create(VarlenProblem problem, TestRandom random)
    {
        long q = (long)problem.TotalQ * problem.HeadsQ * problem.HeadDim, kv = (long)problem.TotalK * problem.HeadsKv * problem.HeadDim;
        return new VarlenInputs<T>
        {
            Problem = problem,
            Random = random,
            Q = Precision<T>.FromFloats(random.Normal(q)),
            K = Precision<T>.FromFloats(random.Normal(kv)),
            V = Precision<T>.FromFloats(random.Normal(kv)),
            DOut = Precision<T>.FromFloats(random.Normal(q)),
        };
    }

    public Tensor<T> QTensor => Tensor.Create(Q, Problem.QLengths);
    public Tensor<T> KTensor => Tensor.Create(K, Problem.KvLengths);
    public Tensor<T> VTensor => Tensor.Create(V, Problem.KvLengths);
    public Tensor<T> DOutTensor => Tensor.Create(DOut, Problem.QLengths);
}

/// <summary>One GPU varlen forward and backward, downloaded.</summary>
internal sealed record VarlenRun<T>(Tensor<T> Output, Tensor<float> LogSumExp, DropoutState? DropoutState, Tensor<T> DQ, Tensor<T> DK, Tensor<T> DV);

/// <summary>
/// The float64 reference and the naive baseline (fp32 on the rounded inputs, outputs rounded to T) of a varlen problem, run
/// sequence by sequence (BatchOffset = sequence index) and assembled into the varlen layouts, as <see cref="VarlenTests"/> does.
/// </summary>
internal sealed class VarlenExpected
{
    public required double[] O64 { get; init; }
    public required double[] ONaive { get; init; }
    public required double[] Lse64 { get; init; }
    public required double[] LseNaive { get; init; }
    public required double[] DQ64 { get; init; }
    public required double[] DQNaive { get; init; }
    public required double[] DK64 { get; init; }
    public required double[] DKNaive { get; init; }
    public required double[] DV64 { get; init; }
    public required double[] DVNaive { get; init; }

    public static VarlenExpected Compute<T>(VarlenInputs<T> inputs, AttentionOptions options, DropoutState? dropoutState) where T : unmanaged
    {
        var p = inputs.Problem;
        int hq = p.HeadsQ, hkv = p.HeadsKv, d = p.HeadDim, totalQ = p.TotalQ;
        T[] q = inputs.Q, k = inputs.K, v = inputs.V, dOut = inputs.DOut;
        var settings = ReferenceSettings.From(options, d, p.Batch, hq, dropoutState);
        double[] o64 = new double[q.Length], oNaive = new double[q.Length], lse64 = new double[hq * totalQ], lseNaive = new double[hq * totalQ];
        double[] dq64 = new double[q.Length], dqNaive = new double[q.Length], dk64 = new double[k.Length], dkNaive = new double[k.Length];
        double[] dv64 = new double[k.Length], dvNaive = new double[k.Length];
        for (int s = 0; s < p.Batch; s++)
        {
            int[] cuQ = p.CuQ, cuK = p.CuK;
            int lq = p.LengthsQ[s];
            var shape = new ReferenceShape(1, lq, p.LengthsK[s], hq, hkv, d);
            var sequence = settings with { BatchOffset = s };
            T[] qs = q[(cuQ[s] * hq * d)..(cuQ[s + 1] * hq * d)], dos = dOut[(cuQ[s] * hq * d)..(cuQ[s + 1] * hq * d)];
            T[] ks = k[(cuK[s] * hkv * d)..(cuK[s + 1] * hkv * d)], vs = v[(cuK[s] * hkv * d)..(cuK[s + 1] * hkv * d)];
            var r64 = ReferenceAttention.Backward(shape, sequence, Precision<T>.ToDoubles(qs), Precision<T>.ToDoubles(ks), Precision<T>.ToDoubles(vs),
                Precision<T>.ToDoubles(dos));
            float[] qf = Precision<T>.ToFloats(qs), kf = Precision<T>.ToFloats(ks), vf = Precision<T>.ToFloats(vs);
            var naiveForward = ReferenceAttention.Forward(shape, sequence, qf, kf, vf, Precision<T>.OperandRounding);
            var stored = Array.ConvertAll(naiveForward.Output, x => Precision<T>.ToFloat(Precision<T>.FromFloat(x)));
            var rNaive = ReferenceAttention.Backward(shape, sequence, qf, kf, vf, Precision<T>.ToFloats(dos), stored, Precision<T>.OperandRounding, probabilitiesFromLse: true);

            r64.Forward.Output.CopyTo(o64, cuQ[s] * hq * d);
            Precision<T>.RoundThrough(naiveForward.Output).CopyTo(oNaive, cuQ[s] * hq * d);
            r64.DQ.CopyTo(dq64, cuQ[s] * hq * d);
            Precision<T>.RoundThrough(rNaive.DQ).CopyTo(dqNaive, cuQ[s] * hq * d);
            r64.DK.CopyTo(dk64, cuK[s] * hkv * d);
            Precision<T>.RoundThrough(rNaive.DK).CopyTo(dkNaive, cuK[s] * hkv * d);
            r64.DV.CopyTo(dv64, cuK[s] * hkv * d);
            Precision<T>.RoundThrough(rNaive.DV).CopyTo(dvNaive, cuK[s] * hkv * d);
            for (int h = 0; h < hq; h++)
                for (int i = 0; i < lq; i++)
                {
                    lse64[h * totalQ + cuQ[s] + i] = r64.Forward.LogSumExp[h * lq + i];
                    lseNaive[h * totalQ + cuQ[s] + i] = naiveForward.LogSumExp[h * lq + i];
                }
        }
        return new VarlenExpected
        {
            O64 = o64, ONaive = oNaive, Lse64 = lse64, LseNaive = lseNaive, DQ64 = dq64, DQNaive = dqNaive,
            DK64 = dk64, DKNaive = dkNaive, DV64 = dv64, DVNaive = dvNaive,
        };
    }
}
