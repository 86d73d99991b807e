using System.Globalization;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Properties;

/// <summary>How a case's ALiBi slopes are shaped.</summary>
internal enum AlibiKind
{
    None,
    PerHead,   // (heads_q)
    PerBatch,  // (batch, heads_q)
}

/// <summary>The options of one generated case, in the generator's terms (the slopes are drawn from the input seed).</summary>
internal sealed record CaseOptions
{
    public bool Causal { get; init; }
    public int WindowLeft { get; init; } = -1;
    public int WindowRight { get; init; } = -1;
    public float? Scale { get; init; }
    public float Softcap { get; init; }
    public float DropoutProbability { get; init; }
    public DropoutState? DropoutState { get; init; }
    public AlibiKind Alibi { get; init; }
    public float[]? AlibiSlopes { get; init; }

    public AttentionOptions ToOptions(Problem problem) => new()
    {
        Causal = Causal,
        WindowLeft = WindowLeft,
        WindowRight = WindowRight,
        SoftmaxScale = Scale,
        Softcap = Softcap,
        DropoutProbability = DropoutProbability,
        DropoutState = DropoutState,
        AlibiSlopes = AlibiSlopes is null ? null
            : Alibi == AlibiKind.PerBatch ? Tensor.Create(AlibiSlopes, [problem.Batch, problem.HeadsQ])
            : Tensor.Create(AlibiSlopes, [problem.HeadsQ]),
    };

    public override string ToString()
    {
        var parts = new List<string>();
        if (Causal) parts.Add("causal");
        if (WindowLeft >= 0 || WindowRight >= 0) parts.Add($"window=({WindowLeft},{WindowRight})");
        parts.Add(Scale is { } s ? F($"scale={s:R}") : "scale=1/sqrt(d)");
        if (Softcap > 0) parts.Add(F($"softcap={Softcap:R}"));
        if (DropoutProbability > 0) parts.Add(F($"dropout={DropoutProbability:R} state={DropoutState}"));
        if (AlibiSlopes is { } slopes)
            parts.Add($"alibi {(Alibi == AlibiKind.PerBatch ? "(batch, heads_q)" : "(heads_q)")}=[{string.Join(", ", slopes.Select(x => F($"{x:G4}")))}]");
        return string.Join(" ", parts);
    }

    private static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}

/// <summary>
/// One generated attention problem: element type, shape, options, how q/k/v (and dO) are laid out in memory, and the
/// seed of the random inputs (<see cref="TestRandom"/>), so the printed case is enough to rebuild it by hand too.
/// </summary>
internal sealed record AttentionCase(Dtype Dtype, Problem Problem, CaseOptions Options, LayoutPlan Layout, int InputSeed)
{
    public AttentionOptions ToOptions() => Options.ToOptions(Problem);

    public TestRandom Random() => new(InputSeed);

    /// <summary>Multiply-adds of one QK^T (the unit the generator's work budget is counted in).</summary>
    /// <summary>Every query row sees at most one key (and some see one): seqlen_k = 1, or a (0, 0) window (causal counts as right = 0).</summary>
    public bool AtMostOneKeyPerRow => Problem.SeqlenK == 1 || (Options.WindowLeft == 0 && (Options.Causal || Options.WindowRight == 0));

    public long Work => (long)Problem.Batch * Problem.HeadsQ * Problem.SeqlenQ * Problem.SeqlenK * Problem.HeadDim;

    public override string ToString() =>
        $"{Name(Dtype)} {Problem} {Options} layout={Layout} inputs=TestRandom({InputSeed})";

    private static string Name(Dtype dtype) => dtype switch { Dtype.Fp32 => "fp32", Dtype.Fp16 => "fp16", _ => "bf16" };
}

/// <summary>Runs a generic check on the case's element type.</summary>
internal static class CaseDispatch
{
    public static void Run(AttentionCase c, Action<AttentionCase> fp32, Action<AttentionCase> fp16, Action<AttentionCase> bf16)
    {
        switch (c.Dtype)
        {
            case Dtype.Fp32: fp32(c); break;
            case Dtype.Fp16: fp16(c); break;
            default: bf16(c); break;
        }
    }
}
