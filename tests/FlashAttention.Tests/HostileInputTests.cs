using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>
/// Hostile numbers on the CPU path, forward and backward, in fp32, fp16 and bf16 (the rules are written out in
/// <see cref="HostileInputs"/> and docs/TEST-MATRIX.md):
/// NaN and +-inf in q, k or v reach the rows and keys that read them (a row whose softmax reads a NaN or +inf score gets
/// O = NaN and LSE = +inf, as in flash-attn; a non-finite v reaches the output column of the rows that see its key; inside one
/// tile a NaN may also reach neighbours of the same head group, 0 * NaN being NaN), and never another batch entry or kv-head
/// group, which stay bit for bit as in the clean run; huge but finite logits (1e4 to
/// 1e30) keep the online softmax finite and within the tolerance of the float64 reference; rows that see no key give O = 0,
/// LSE = +inf and dQ = 0; and empty shapes (batch 0, seqlen 0, heads 0) and seqlen 1 work. CudaHostileInputTests runs the
/// same cases on the GPU and compares the two paths.
/// </summary>
public sealed class HostileInputTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static TheoryData<string, Dtype> ForwardCases() => HostileCases.Data(backward: false, Dtype.Fp32, Dtype.Fp16, Dtype.Bf16);

    public static TheoryData<string, Dtype> BackwardCases() => HostileCases.Data(backward: true, Dtype.Fp32, Dtype.Fp16, Dtype.Bf16);

    [Theory]
    [MemberData(nameof(ForwardCases))]
    public void ForwardFollowsTheRules(string name, Dtype dtype)
    {
        var c = HostileCases.All[name];
        switch (dtype)
        {
            case Dtype.Fp32: Forward<float>(c); break;
            case Dtype.Fp16: Forward<Half>(c); break;
            default: Forward<BFloat16>(c); break;
        }
    }

    [Theory]
    [MemberData(nameof(BackwardCases))]
    public void BackwardFollowsTheRules(string name, Dtype dtype)
    {
        var c = HostileCases.All[name];
        switch (dtype)
        {
            case Dtype.Fp32: Backward<float>(c); break;
            case Dtype.Fp16: Backward<Half>(c); break;
            default: Backward<BFloat16>(c); break;
        }
    }

    private static void Forward<T>(HostileCase c) where T : unmanaged
    {
        var (clean, poisoned) = HostileInputs.Create<T>(c);
        HostileCheck.Forward(c, clean, poisoned, HostileCheck.CpuForward);
    }

    private static void Backward<T>(HostileCase c) where T : unmanaged
    {
        var (clean, poisoned) = HostileInputs.Create<T>(c);
        HostileCheck.Backward(c, clean, poisoned, HostileCheck.CpuForward, HostileCheck.CpuBackward);
    }

    /// <summary>
    /// Varlen: a NaN key of one sequence poisons the rows of that sequence that see it (O = NaN, LSE = +inf) and nothing else;
    /// the other sequences of the concatenated batch keep their clean outputs and gradients bit for bit.
    /// </summary>
    [Theory]
    [InlineData(Dtype.Fp32)]
    [InlineData(Dtype.Bf16)]
    public void VarlenNaNStaysInItsSequence(Dtype dtype)
    {
        switch (dtype)
        {
            case Dtype.Fp32: Varlen<float>(); break;
            case Dtype.Fp16: Varlen<Half>(); break;
            default: Varlen<BFloat16>(); break;
        }
    }

    private static void Varlen<T>() where T : unmanaged
    {
        int[] cuQ = [0, 30, 95, 140], cuK = [0, 50, 120, 190];
        const int heads = 2, d = 24, poisonedKey = 10; // key 10 of sequence 1 (65 queries, 70 keys: row i sees it when i >= 5)
        var random = new TestRandom();
        T[] Normal(int count) => Precision<T>.FromFloats(random.Normal(count));
        T[] q = Normal(140 * heads * d), k = Normal(190 * d), v = Normal(190 * d), dOut = Normal(140 * heads * d);
        T[] poisonedK = (T[])k.Clone();
        poisonedK[(cuK[1] + poisonedKey) * d + 3] = Precision<T>.FromFloat(float.NaN);
        var options = new AttentionOptions { Causal = true };
        string context = $"[{Precision<T>.Name} varlen {random}]";

        (double[] O, double[] Lse, double[] DQ, double[] DK, double[] DV) Run(T[] keys)
        {
            var qt = Tensor.Create(q, [140, heads, d]);
            var kt = Tensor.Create(keys, [190, 1, d]);
            var vt = Tensor.Create(v, [190, 1, d]);
            var forward = FlashAttention.ForwardVarlen<T>(qt, kt, vt, cuQ, cuK, 65, 70, options, Ct);
            var grads = FlashAttention.BackwardVarlen<T>(Tensor.Create(dOut, [140, heads, d]), qt, kt, vt, forward.Output, forward.LogSumExp,
                cuQ, cuK, 65, 70, options, cancellationToken: Ct);
            return (Precision<T>.Flatten(forward.Output), Flat.Of(forward.LogSumExp), Precision<T>.Flatten(grads.DQ),
                Precision<T>.Flatten(grads.DK), Precision<T>.Flatten(grads.DV));
        }

        var clean = Run(k);
        var hostile = Run(poisonedK);
        for (int t = 0; t < 140; t++)
        {
            int i = t - cuQ[1];
            bool poisoned = i >= 5 && t < cuQ[2];
            for (int h = 0; h < heads; h++)
            {
                double lse = hostile.Lse[h * 140 + t];
                Assert.True(poisoned ? double.IsPositiveInfinity(lse) : lse.Equals(clean.Lse[h * 140 + t]), $"LSE[h={h}, t={t}] = {lse}. {context}");
                for (int c = 0; c < d; c++)
                {
                    int at = (t * heads + h) * d + c;
                    Assert.True(poisoned ? double.IsNaN(hostile.O[at]) : hostile.O[at].Equals(clean.O[at]), $"O[t={t}, h={h}, c={c}] = {hostile.O[at]}. {context}");
                    if (t < cuQ[1] || t >= cuQ[2])
                        Assert.True(hostile.DQ[at].Equals(clean.DQ[at]), $"dQ[t={t}, h={h}, c={c}] = {hostile.DQ[at]} in a clean sequence. {context}");
                }
            }
        }
        for (int t = 0; t < 190; t++)
            if (t < cuK[1] || t >= cuK[2])
                for (int c = 0; c < d; c++)
                    Assert.True(hostile.DK[t * d + c].Equals(clean.DK[t * d + c]) && hostile.DV[t * d + c].Equals(clean.DV[t * d + c]),
                        $"dK/dV[t={t}, c={c}] changed in a clean sequence. {context}");
    }

    /// <summary>
    /// Logits up to 2e5 (fp16), 2.5e4 (bf16) and 6e6 (fp32) that differ between keys by small integers, computed exactly by
    /// every path: O and LSE stay finite and within the rule of the float64 reference.
    /// </summary>
    [Theory]
    [InlineData(Dtype.Fp32, false)]
    [InlineData(Dtype.Fp32, true)]
    [InlineData(Dtype.Fp16, false)]
    [InlineData(Dtype.Bf16, true)]
    public void LargeLogitsForwardMatchesReference(Dtype dtype, bool causal)
    {
        var problem = new Problem(2, 100, 150, 4, 2, 64);
        switch (dtype)
        {
            case Dtype.Fp32: LargeLogits<float>(problem, LargeScores.MaxLog2Magnitude<float>(), causal, backward: false); break;
            case Dtype.Fp16: LargeLogits<Half>(problem, LargeScores.MaxLog2Magnitude<Half>(), causal, backward: false); break;
            default: LargeLogits<BFloat16>(problem, LargeScores.MaxLog2Magnitude<BFloat16>(), causal, backward: false); break;
        }
    }

    /// <summary>
    /// Backward at large logits, as large as the rule allows: P is recomputed as exp(logit - LSE) from the fp32 LSE, whose
    /// rounding (|LSE| * 2^-24) becomes P's relative error, so the gradients meet the rule while that stays under the format's
    /// unit roundoff: logits to 1.2e4 in fp16, 2.5e4 in bf16. (At 2e5 fp16 gradients are off by 5x the rule; fp32 gradients
    /// exceed its 2^-19 floor from about 1e2 on; flash-attn's backward reads the same fp32 LSE.)
    /// </summary>
    [Theory]
    [InlineData(Dtype.Fp16, false)]
    [InlineData(Dtype.Bf16, true)]
    public void LargeLogitsBackwardMatchesReference(Dtype dtype, bool causal)
    {
        var problem = new Problem(2, 100, 150, 4, 2, 64);
        if (dtype == Dtype.Fp16) LargeLogits<Half>(problem, LargeScores.BackwardLog2Magnitude, causal, backward: true);
        else LargeLogits<BFloat16>(problem, LargeScores.MaxLog2Magnitude<BFloat16>(), causal, backward: true);
    }

    private static void LargeLogits<T>(Problem problem, int log2Magnitude, bool causal, bool backward) where T : unmanaged
    {
        var (inputs, options) = LargeScores.FineLogits<T>(problem, log2Magnitude);
        options = options with { Causal = causal };
        if (backward) AttentionCheck.Backward(problem, options, inputs);
        else AttentionCheck.Forward(problem, options, inputs: inputs);
    }

    /// <summary>
    /// Logits that jump by thousands to millions from one key block to the next, rising or falling: the running maximum's
    /// rescale factors underflow to 0 and later blocks add exp(-huge) = 0, and O stays finite and equal to the reference.
    /// </summary>
    [Theory]
    [InlineData(Dtype.Fp32, 100f, false)]
    [InlineData(Dtype.Fp32, 10000f, true)]
    [InlineData(Dtype.Fp16, 10000f, false)]
    [InlineData(Dtype.Fp16, 100f, true)]
    [InlineData(Dtype.Bf16, 10000f, false)]
    [InlineData(Dtype.Bf16, 10000f, true)]
    public void OnlineSoftmaxSurvivesHugeJumps(Dtype dtype, float step, bool causal)
    {
        var problem = new Problem(1, 150, 200, 2, 1, 16);
        switch (dtype)
        {
            case Dtype.Fp32: Ramp<float>(problem, step, causal); break;
            case Dtype.Fp16: Ramp<Half>(problem, step, causal); break;
            default: Ramp<BFloat16>(problem, step, causal); break;
        }
    }

    private static void Ramp<T>(Problem problem, float step, bool causal) where T : unmanaged
    {
        var (inputs, options) = LargeScores.Ramp<T>(problem, step, causal);
        AttentionCheck.Forward(problem, options, inputs: inputs);
    }

    /// <summary>fp32 inputs of magnitude 1e15 (scores around 1e30, far from overflow): the softmax is one-hot and exact.</summary>
    [Fact]
    public void HugeFp32InputsMatchReference()
    {
        var problem = new Problem(2, 90, 130, 2, 2, 32);
        AttentionCheck.Forward(problem, new AttentionOptions { Causal = true }, inputs: LargeScores.Scaled<float>(problem, 1e15f));
    }

    /// <summary>Softcap bounds every score, infinite ones included: +-inf in q gives logits of +-cap, a finite output.</summary>
    [Theory]
    [InlineData(Dtype.Fp32)]
    [InlineData(Dtype.Fp16)]
    [InlineData(Dtype.Bf16)]
    public void SoftcapBoundsInfiniteScores(Dtype dtype)
    {
        switch (dtype)
        {
            case Dtype.Fp32: Softcap<float>(); break;
            case Dtype.Fp16: Softcap<Half>(); break;
            default: Softcap<BFloat16>(); break;
        }
    }

    private static void Softcap<T>() where T : unmanaged
    {
        var (problem, inputs) = InfiniteQueries<T>();
        var result = AttentionCheck.Forward(problem, new AttentionOptions { Softcap = 5f }, inputs: inputs);
        Assert.All(Precision<T>.Flatten(result.Output), x => Assert.True(double.IsFinite(x), $"O = {x}"));
    }

    /// <summary>Random inputs with +inf or -inf in one column of every third query row (the same inputs the CUDA test uses).</summary>
    internal static (Problem Problem, Inputs<T> Inputs) InfiniteQueries<T>() where T : unmanaged
    {
        var problem = new Problem(1, 80, 100, 2, 1, 40);
        var inputs = Inputs<T>.Create(problem);
        for (int i = 0; i < problem.SeqlenQ; i += 3)
            for (int h = 0; h < problem.HeadsQ; h++)
                inputs.Q[Reference.ReferenceAttention.QIndex(problem.Shape, 0, i, h, (i + h) % problem.HeadDim)] =
                    Precision<T>.FromFloat(i % 2 == 0 ? float.PositiveInfinity : float.NegativeInfinity);
        return (problem, inputs);
    }

    public static TheoryData<Dtype, int, int, int, int> EmptyShapes()
    {
        var data = new TheoryData<Dtype, int, int, int, int>();
        foreach (var dtype in Enum.GetValues<Dtype>())
        {
            data.Add(dtype, 0, 5, 7, 2);  // batch 0
            data.Add(dtype, 2, 0, 7, 2);  // seqlen_q 0: dK = dV = 0
            data.Add(dtype, 2, 5, 0, 2);  // seqlen_k 0: O = 0, LSE = +inf, dQ = 0
            data.Add(dtype, 2, 0, 0, 2);  // both
            data.Add(dtype, 2, 5, 7, 0);  // heads_q 0 (heads_kv 1 divides it): empty O and LSE, dK = dV = 0
        }
        return data;
    }

    /// <summary>Empty work in every dtype, forward and backward: the shapes and values that are promised.</summary>
    [Theory]
    [MemberData(nameof(EmptyShapes))]
    public void EmptyShapesEveryDtype(Dtype dtype, int batch, int seqlenQ, int seqlenK, int headsQ)
    {
        var problem = new Problem(batch, seqlenQ, seqlenK, headsQ, 1, 8);
        switch (dtype)
        {
            case Dtype.Fp32: Empty<float>(problem); break;
            case Dtype.Fp16: Empty<Half>(problem); break;
            default: Empty<BFloat16>(problem); break;
        }
    }

    private static void Empty<T>(Problem problem) where T : unmanaged
    {
        var inputs = Inputs<T>.Create(problem);
        var options = new AttentionOptions { Causal = true };
        var forward = HostileCheck.CpuForward(inputs, options);
        var grads = HostileCheck.CpuBackward(inputs, options, forward);
        EmptyWork.AssertPromises(problem, forward, grads, "CPU");
    }

    [Fact]
    public void HeadsKvZeroIsRejected()
    {
        var q = Tensor.Create(new float[1 * 4 * 2 * 8], [1, 4, 2, 8]);
        var kv = Tensor.Create(Array.Empty<float>(), [1, 4, 0, 8]);
        var error = Assert.Throws<ArgumentException>(() => FlashAttention.Forward<float>(q, kv, kv, cancellationToken: Ct));
        Assert.Equal("k", error.ParamName);
    }

    /// <summary>
    /// One query and one key: P = 1, so O = v exactly in fp16 and bf16 (fp32 within the rule) and dQ = dK = 0 within the rule.
    /// fp32 runs forward only: its dQ and dK are the residue of dP - D (two dot products summed in different orders), which the
    /// naive baseline cancels exactly, so no floor bounds it (BackwardTests says more; it runs the single-head fp32 case).
    /// </summary>
    [Theory]
    [InlineData(Dtype.Fp32, false)]
    [InlineData(Dtype.Fp16, false)]
    [InlineData(Dtype.Bf16, true)]
    public void SingleQuerySingleKey(Dtype dtype, bool causal)
    {
        var problem = new Problem(2, 1, 1, 4, 2, 40);
        var options = new AttentionOptions { Causal = causal };
        switch (dtype)
        {
            case Dtype.Fp32: AttentionCheck.Forward<float>(problem, options); break;
            case Dtype.Fp16: SingleKey<Half>(problem, options); break;
            default: SingleKey<BFloat16>(problem, options); break;
        }
    }

    private static void SingleKey<T>(Problem problem, AttentionOptions options) where T : unmanaged
    {
        var inputs = Inputs<T>.Create(problem);
        AttentionCheck.Backward(problem, options, inputs);
        EmptyWork.AssertOutputIsValue(problem, inputs, HostileCheck.CpuForward(inputs, options), "CPU");
    }

    public static TheoryData<Dtype, int, int, int, int, bool> NoKeyRows() => new()
    {
        { Dtype.Fp32, 90, 20, -1, -1, true },   // causal, seqlen_q > seqlen_k: rows 0..69 see nothing
        { Dtype.Fp16, 130, 64, -1, -1, true },  // the empty rows span two whole query blocks
        { Dtype.Bf16, 50, 10, 0, 0, false },    // window (0, 0): only rows 40..49 have their diagonal key
        { Dtype.Fp16, 100, 30, 5, -1, true },   // causal with a left window
    };

    /// <summary>Rows that see no key: O = 0 and LSE = +inf exactly, and zero gradients, while the rest match the reference.</summary>
    [Theory]
    [MemberData(nameof(NoKeyRows))]
    public void RowsThatSeeNoKeyHaveZeroOutputAndGradients(Dtype dtype, int seqlenQ, int seqlenK, int left, int right, bool causal)
    {
        var problem = new Problem(2, seqlenQ, seqlenK, 2, 1, 24);
        var options = new AttentionOptions { WindowLeft = left, WindowRight = right, Causal = causal };
        switch (dtype)
        {
            case Dtype.Fp32: NoKey<float>(problem, options); break;
            case Dtype.Fp16: NoKey<Half>(problem, options); break;
            default: NoKey<BFloat16>(problem, options); break;
        }
    }

    private static void NoKey<T>(Problem problem, AttentionOptions options) where T : unmanaged
    {
        var inputs = Inputs<T>.Create(problem);
        AttentionCheck.Backward(problem, options, inputs);
        var forward = HostileCheck.CpuForward(inputs, options);
        var grads = HostileCheck.CpuBackward(inputs, options, forward);
        Assert.True(HostileInputs.AssertRowsThatSeeNoKey(problem, options, forward, grads, "CPU") > 0, "the case has no row that sees nothing");
    }
}
