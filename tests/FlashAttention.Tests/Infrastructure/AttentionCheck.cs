using FlashAttn.Reference;

namespace FlashAttn.Tests.Infrastructure;

/// <summary>
/// Runs the library on random inputs and checks it against the float64 reference with the tolerance rule,
/// the naive baseline being the same reference run in fp32 on the rounded inputs, with P and dS rounded to P before their
/// products (as an unfused computation in P stores them, and as flash-attn's own tests build their baseline) and outputs rounded to P.
/// Its backward recomputes P from its own fp32 log-sum-exp, as every FlashAttention backward does (TEST-MATRIX rule 10).
/// </summary>
internal static class AttentionCheck
{
    /// <summary>Tuning aid: FA_NAIVE_NORMALIZED=1 makes the naive backward normalise P exactly instead of recomputing it from its
    /// fp32 LSE, to compare the two baselines on one case.</summary>
    private static readonly bool NaiveFromLse = Environment.GetEnvironmentVariable("FA_NAIVE_NORMALIZED") != "1";

    /// <summary>The naive backward forms D = rowsum(dO * O) from the output the tested path's forward returned, the O its
    /// backward is given (TEST-MATRIX.md, "Backward on the same O"): the backward is held to the unfused computation on the same
    /// inputs, and O itself to the rule by the forward check. Where few keys are visible, dS = P (dP - D) cancels and an
    /// O that passes its own check can still move dQ by more than twice the naive error with the naive's own O.
    /// FA_NAIVE_OWN_OUTPUT=1 brings back the naive's own rounded output, to compare.</summary>
    private static readonly bool NaiveOwnOutput = Environment.GetEnvironmentVariable("FA_NAIVE_OWN_OUTPUT") == "1";

    /// <summary>Forward: O and LSE (and P when <paramref name="checkProbabilities"/>) against the reference.</summary>
    /// <param name="run">Runs the forward on another execution path (the CUDA tests); null for the CPU path.</param>
    public static AttentionResult<T> Forward<T>(Problem problem, AttentionOptions? options = null, bool checkProbabilities = false,
        Inputs<T>? inputs = null, Func<Inputs<T>, AttentionOptions, AttentionResult<T>>? run = null) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        if (checkProbabilities) options = options with { ReturnProbabilities = true };
        inputs ??= Inputs<T>.Create(problem);
        var result = run is null
            ? FlashAttention.Forward<T>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, TestContext.Current.CancellationToken)
            : run(inputs, options);
        string context = Context<T>(problem, options, inputs.Random);

        var settings = ReferenceSettings.From(options, problem.HeadDim, problem.Batch, problem.HeadsQ, result.DropoutState);
        var ref64 = ReferenceAttention.Forward(problem.Shape, settings, Precision<T>.ToDoubles(inputs.Q), Precision<T>.ToDoubles(inputs.K), Precision<T>.ToDoubles(inputs.V));
        var naive = ReferenceAttention.Forward(problem.Shape, settings, Precision<T>.ToFloats(inputs.Q), Precision<T>.ToFloats(inputs.K), Precision<T>.ToFloats(inputs.V),
            Precision<T>.OperandRounding);

        Assert.Equal(problem.QLengths, result.Output.Lengths.ToArray());
        Assert.Equal(problem.LseLengths, result.LogSumExp.Lengths.ToArray());
        double u = Precision<T>.FloorUnit;
        Tolerance.AssertClose("O", Precision<T>.Flatten(result.Output), ref64.Output, Precision<T>.RoundThrough(naive.Output), u, context);
        Tolerance.AssertClose("LSE", Flat.Of(result.LogSumExp), ref64.LogSumExp, Flat.Widen(naive.LogSumExp), u, context);
        if (checkProbabilities)
            Probabilities(result, ref64, naive, u, context);
        return result;
    }

    /// <summary>ReturnProbabilities: |P| against the reference's un-dropped P, and the sign against the keep mask.</summary>
    private static void Probabilities<T>(AttentionResult<T> result, ReferenceForward<double> ref64, ReferenceForward<float> naive, double u, string context)
    {
        Assert.NotNull(result.Probabilities);
        var p = Flat.Of(result.Probabilities);
        var magnitude = Array.ConvertAll(p, Math.Abs);
        Tolerance.AssertClose("P", magnitude, ref64.Probabilities, Flat.Widen(naive.Probabilities), Math.Max(u, Precision<float>.FloorUnit), context);
        for (int i = 0; i < p.Length; i++)
        {
            if (p[i] == 0 || ref64.Probabilities[i] == 0) continue; // masked or underflowed: the sign carries nothing
            if (p[i] < 0 == ref64.Kept[i])
                Assert.Fail($"P[{i}] = {p[i]} but the reference mask says {(ref64.Kept[i] ? "kept" : "dropped")}. {context}");
        }
    }

    /// <summary>Backward: dQ, dK, dV against the reference gradients (the forward is checked on the way).</summary>
    /// <param name="run">Runs the forward on another execution path (the CUDA tests); null for the CPU path.</param>
    /// <param name="runBackward">Runs backward on another path, given the inputs and that path's forward result.</param>
    public static AttentionGradients<T> Backward<T>(Problem problem, AttentionOptions? options = null, Inputs<T>? inputs = null,
        Func<Inputs<T>, AttentionOptions, AttentionResult<T>>? run = null,
        Func<Inputs<T>, AttentionOptions, AttentionResult<T>, AttentionGradients<T>>? runBackward = null) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        inputs ??= Inputs<T>.Create(problem);
        var forward = Forward(problem, options, inputs: inputs, run: run);
        var grads = runBackward is not null
            ? runBackward(inputs, options, forward)
            : FlashAttention.Backward<T>(inputs.DOutTensor, inputs.QTensor, inputs.KTensor, inputs.VTensor, forward.Output, forward.LogSumExp,
                options, forward.DropoutState, TestContext.Current.CancellationToken);
        string context = Context<T>(problem, options, inputs.Random);

        var settings = ReferenceSettings.From(options, problem.HeadDim, problem.Batch, problem.HeadsQ, forward.DropoutState);
        var ref64 = ReferenceAttention.Backward(problem.Shape, settings, Precision<T>.ToDoubles(inputs.Q), Precision<T>.ToDoubles(inputs.K),
            Precision<T>.ToDoubles(inputs.V), Precision<T>.ToDoubles(inputs.DOut));
        float[] qf = Precision<T>.ToFloats(inputs.Q), kf = Precision<T>.ToFloats(inputs.K), vf = Precision<T>.ToFloats(inputs.V);
        var naiveOutput = ReferenceAttention.Forward(problem.Shape, settings, qf, kf, vf, Precision<T>.OperandRounding).Output;
        var storedOutput = NaiveOwnOutput
            ? Array.ConvertAll(naiveOutput, x => Precision<T>.ToFloat(Precision<T>.FromFloat(x)))
            : Array.ConvertAll(Precision<T>.Flatten(forward.Output), x => (float)x);
        var naive = ReferenceAttention.Backward(problem.Shape, settings, qf, kf, vf, Precision<T>.ToFloats(inputs.DOut), storedOutput,
            Precision<T>.OperandRounding, probabilitiesFromLse: NaiveFromLse);

        Assert.Equal(problem.QLengths, grads.DQ.Lengths.ToArray());
        Assert.Equal(problem.KvLengths, grads.DK.Lengths.ToArray());
        Assert.Equal(problem.KvLengths, grads.DV.Lengths.ToArray());
        double u = Precision<T>.FloorUnit;
        Tolerance.AssertClose("dQ", Precision<T>.Flatten(grads.DQ), ref64.DQ, Precision<T>.RoundThrough(naive.DQ), u, context);
        Tolerance.AssertClose("dK", Precision<T>.Flatten(grads.DK), ref64.DK, Precision<T>.RoundThrough(naive.DK), u, context);
        Tolerance.AssertClose("dV", Precision<T>.Flatten(grads.DV), ref64.DV, Precision<T>.RoundThrough(naive.DV), u, context);
        return grads;
    }

    public static string Context<T>(Problem problem, AttentionOptions? options, TestRandom random) where T : unmanaged =>
        $"[{Precision<T>.Name} {problem} {Describe.Options(options)} {random}]";
}
