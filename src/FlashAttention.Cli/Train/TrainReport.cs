using System.Globalization;
using System.Text;
using FlashAttn.Training;

namespace FlashAttn.Cli.Train;

/// <summary>
/// The experiment's verdict in the article's form: per attention tokens/s, speed-up over the unfused baseline, peak memory and the
/// memory saved, and the longest trainable context; the loss agreement between attentions; and issue 8's targets.
/// </summary>
internal static class TrainReport
{
    /// <summary>Issue 8: ours trains at least this many times the unfused baseline's tokens/s (the article: 2.9x on A100).</summary>
    public const double SpeedupOverUnfused = 2.9;

    /// <summary>Issue 8: ours' peak memory is at least this share below the unfused baseline's (the article: 52.8%).</summary>
    public const double MemorySaved = 0.528;

    /// <summary>Issue 8: ours is at least as fast as TorchSharp's SDPA.</summary>
    public const double SpeedupOverSdpa = 1.0;

    /// <summary>Issue 8: ours trains contexts at least this many times the unfused baseline's longest.</summary>
    public const double ContextRatio = 4.0;

    /// <summary>The context the speed and memory targets are set at.</summary>
    public const int TargetContext = 4096;

    /// <summary>Losses are compared over at most this many first steps.</summary>
    public const int LossSteps = 50;

    /// <summary>
    /// Largest |loss difference| (nats) at which two attentions count as agreeing: bf16 rounding differs between the three
    /// attentions, and training amplifies such differences step by step, so losses agree closely at step 0 (about 1e-3) and
    /// drift apart a little after; 0.1 nats is under 1% of the initial loss (ln 50257 = 10.8) and far below the loss's fall.
    /// </summary>
    public const double LossTolerance = 0.1;

    private const double GiB = 1024.0 * 1024 * 1024;

    /// <summary>A row of the article's table.</summary>
    /// <param name="Speedup">Tokens/s over the unfused baseline's; null when either did not train.</param>
    /// <param name="MemorySaved">1 - peak / the unfused baseline's peak; null when either did not train.</param>
    public sealed record TableRow(AttentionKind Kind, bool Trained, string? Failure, double TokensPerSecond, double? Speedup, double PeakGiB,
        double? MemorySaved, string LargestContext);

    /// <summary>One of issue 8's targets.</summary>
    /// <param name="Name">What it requires, in words.</param>
    /// <param name="Required">The bound (a ratio or share).</param>
    /// <param name="Actual">The measured value; null when it cannot be judged.</param>
    /// <param name="Note">Why it cannot be judged, or a caveat.</param>
    public sealed record Target(string Name, double Required, double? Actual, string? Note = null)
    {
        /// <summary>True or false when judged; null when not.</summary>
        public bool? Pass => Actual is { } actual ? actual >= Required : null;
    }

    /// <summary>The loss agreement of two attentions over their first <see cref="LossSteps"/> common steps.</summary>
    /// <param name="Tolerance">The larger of <see cref="LossTolerance"/> and the run's bf16 noise floor: the difference between
    /// the two PyTorch attentions (unfused and SDPA), which compute the same math with different rounding.</param>
    public sealed record LossAgreement(AttentionKind A, AttentionKind B, int Steps, double MaxDifference, int AtStep, double FirstStepDifference,
        double Tolerance = LossTolerance)
    {
        public bool Pass => Steps > 0 && MaxDifference <= Tolerance;
    }

    public static IReadOnlyList<TableRow> Table(TrainSummary summary)
    {
        var baseline = summary.Of(AttentionKind.Unfused) is { Trained: true } u ? u : null;
        return [.. summary.Runs.Select(run =>
        {
            bool trained = run.Trained;
            double peak = run.Result.PeakMemoryBytes / GiB;
            return new TableRow(run.Kind, trained, run.Result.Failure ?? (trained ? null : "did not finish its steps"),
                trained ? run.Result.TokensPerSecond : double.NaN,
                trained && baseline is not null ? run.Result.TokensPerSecond / baseline.Result.TokensPerSecond : null,
                trained ? peak : double.NaN,
                trained && baseline is not null ? 1 - (double)run.Result.PeakMemoryBytes / baseline.Result.PeakMemoryBytes : null,
                ContextText(summary, run));
        })];
    }

    /// <summary>"8k", "64k+" (the sweep's largest trained: the limit is beyond), "none" (not even the smallest), "-" (no sweep).</summary>
    public static string ContextText(TrainSummary summary, AttentionRun run)
    {
        if (!summary.SweepRan || run.Sweep is null) return "-";
        if (run.LargestContext is not { } largest) return "none";
        return Tokens(largest) + (run.SweepCapped(summary.SweepContexts) ? "+" : "");
    }

    /// <summary>Issue 8's four targets, each judged when its runs are there.</summary>
    public static IReadOnlyList<Target> Targets(TrainSummary summary)
    {
        var ours = summary.Of(AttentionKind.Flash);
        var unfused = summary.Of(AttentionKind.Unfused);
        var sdpa = summary.Of(AttentionKind.Sdpa);
        string? contextNote = summary.Context == TargetContext ? null : $"measured at context {summary.Context}; the target is set at {TargetContext}";

        static string? Missing(AttentionRun? run, string name) =>
            run is null ? $"{name} was not run" : run.Trained ? null : $"{name} did not train ({run.Result.Failure ?? "incomplete"})";

        string? speedMissing = Missing(ours, "ours") ?? Missing(unfused, "unfused");
        var speed = new Target($"ours >= {SpeedupOverUnfused}x unfused tokens/s at context {TargetContext}", SpeedupOverUnfused,
            speedMissing is null ? ours!.Result.TokensPerSecond / unfused!.Result.TokensPerSecond : null, speedMissing ?? contextNote);
        var memory = new Target($"ours >= {MemorySaved:0.0%} less peak memory than unfused at context {TargetContext}", MemorySaved,
            speedMissing is null ? 1 - (double)ours!.Result.PeakMemoryBytes / unfused!.Result.PeakMemoryBytes : null, speedMissing ?? contextNote);
        string? sdpaMissing = Missing(ours, "ours") ?? Missing(sdpa, "SDPA");
        var overSdpa = new Target($"ours >= {SpeedupOverSdpa:0.0}x SDPA tokens/s", SpeedupOverSdpa,
            sdpaMissing is null ? ours!.Result.TokensPerSecond / sdpa!.Result.TokensPerSecond : null, sdpaMissing);
        return [speed, memory, overSdpa, ContextTarget(summary, ours, unfused)];
    }

    private static Target ContextTarget(TrainSummary summary, AttentionRun? ours, AttentionRun? unfused)
    {
        string name = $"ours' longest trainable context >= {ContextRatio:0}x unfused's";
        if (!summary.SweepRan) return new(name, ContextRatio, null, "the context sweep did not run");
        if (ours?.Sweep is null || unfused?.Sweep is null) return new(name, ContextRatio, null, "needs the sweep of both ours and unfused");
        if (ours.LargestContext is not { } oursLargest) return new(name, ContextRatio, 0, "ours trained none of the sweep's contexts");
        if (unfused.LargestContext is not { } unfusedLargest)
            return new(name, ContextRatio, double.PositiveInfinity, $"unfused trained none of the sweep's contexts (from {Tokens(summary.SweepContexts[0])})");
        string? note = ours.SweepCapped(summary.SweepContexts) ? $"ours trained the sweep's longest context; its limit is beyond {Tokens(oursLargest)}" : null;
        return new(name, ContextRatio, (double)oursLargest / unfusedLargest, note);
    }

    /// <summary>Each pair of attentions that trained: the largest |loss difference| over their first <see cref="LossSteps"/> common steps.</summary>
    public static IReadOnlyList<LossAgreement> Agreement(TrainSummary summary)
    {
        var result = new List<LossAgreement>();
        var runs = summary.Runs.Where(r => r.Result.Steps.Count > 0).ToList();
        for (int i = 0; i < runs.Count; i++)
            for (int j = i + 1; j < runs.Count; j++)
            {
                var a = runs[i].Losses;
                var b = runs[j].Losses;
                int steps = Math.Min(LossSteps, Math.Min(a.Count, b.Count));
                double max = 0;
                int at = 0;
                for (int s = 0; s < steps; s++)
                {
                    double difference = Math.Abs(a[s] - b[s]);
                    if (difference > max || double.IsNaN(difference))
                    {
                        max = double.IsNaN(difference) ? double.PositiveInfinity : difference;
                        at = s;
                    }
                }
                result.Add(new LossAgreement(runs[i].Kind, runs[j].Kind, steps, max, at, steps > 0 ? Math.Abs(a[0] - b[0]) : double.NaN));
            }
        // bf16 training amplifies rounding differences step by step; how far the two PyTorch attentions drift apart is the noise
        // floor any third implementation of the same math may show too.
        double noise = result.FirstOrDefault(p => IsPair(p, AttentionKind.Unfused, AttentionKind.Sdpa))?.MaxDifference ?? 0;
        double tolerance = double.IsFinite(noise) ? Math.Max(LossTolerance, noise) : LossTolerance;
        return [.. result.Select(p => p with { Tolerance = tolerance })];
    }

    private static bool IsPair(LossAgreement p, AttentionKind x, AttentionKind y) => (p.A == x && p.B == y) || (p.A == y && p.B == x);

    /// <summary>report.md.</summary>
    /// <param name="summary">The experiment.</param>
    /// <param name="plots">File names of the plots beside the report, with a caption each.</param>
    public static string Markdown(TrainSummary summary, IReadOnlyList<(string File, string Caption)> plots)
    {
        var md = new StringBuilder();
        var c = summary.Config;
        md.AppendLine($"# LLaMA training with three attentions: {summary.Device}");
        md.AppendLine();
        md.AppendLine($"Run {summary.Run}: `flash-attn train`, issue 8's reproduction of the FlashAttention-2 article's experiment " +
                      $"(LLaMA-7B-shaped layers, context {summary.Context}).");
        md.AppendLine();
        md.AppendLine("| attention | tokens/s | speedup vs unfused | peak memory GiB | memory saved vs unfused | largest context |");
        md.AppendLine("|---|---:|---:|---:|---:|---:|");
        foreach (var row in Table(summary))
        {
            if (row.Trained)
                md.AppendLine($"| {TrainAttention.Label(row.Kind)} | {Number(row.TokensPerSecond, "0")} | {Ratio(row.Speedup)} | {Number(row.PeakGiB, "0.00")} | " +
                              $"{Share(row.MemorySaved)} | {row.LargestContext} |");
            else
                md.AppendLine($"| {TrainAttention.Label(row.Kind)} | failed: {Cell(row.Failure)} | - | - | - | {row.LargestContext} |");
        }
        md.AppendLine();
        md.AppendLine("Tokens/s counts the steps after the warm-up; peak memory is the most device memory in use (as the driver reports it, " +
                      "libtorch's cached blocks included) after any forward, backward or update, less what was in use before the run; " +
                      "the largest context is the longest of " + (summary.SweepRan ? string.Join(", ", summary.SweepContexts.Select(Tokens)) : "the sweep's contexts") +
                      $" that trains {ExperimentPlan.ProbeSteps} steps at batch 1 with the same layers (\"+\": the sweep's longest trained, the limit is beyond).");
        md.AppendLine();

        md.AppendLine("## Configuration");
        md.AppendLine();
        md.AppendLine($"- Model: {c.Layers} layers of LLaMA-7B's shape (hidden {c.Hidden}, {c.Heads} heads x {c.HeadDim}, {c.KvHeads} KV heads, " +
                      $"SwiGLU {c.Mlp}, RMSNorm, rotary embeddings), vocabulary {c.VocabSize}, {(c.TiedHead ? "tied" : "untied")} head: " +
                      $"{ModelSize.Format(ModelSize.Parameters(c))} parameters");
        string rate = summary.Runs.FirstOrDefault() is { } first ? $" (learning rate {first.Result.Settings.LearningRate.ToString("G3", CultureInfo.InvariantCulture)})" : "";
        md.AppendLine($"- Batch {summary.Batch}, context {summary.Context}, {summary.Steps} steps, seed {summary.Seed}, causal, dropout off, AdamW{rate}, bf16");
        md.AppendLine($"- Corpus: {summary.Corpus} ({summary.CorpusDocuments} documents, {summary.CorpusTokens:N0} tokens; small, so training cycles over it: " +
                      "right for throughput, memory and loss agreement, not for model quality)");
        md.AppendLine($"- Tokenizer: {summary.Tokenizer}");
        foreach (string note in summary.Notes) md.AppendLine($"- {note}");
        md.AppendLine();

        md.AppendLine("## Loss agreement");
        md.AppendLine();
        var agreement = Agreement(summary);
        if (agreement.Count == 0)
            md.AppendLine("Fewer than two attentions trained: nothing to compare.");
        else
        {
            md.AppendLine($"Same weights, same batches (seed {summary.Seed}), dropout off: the largest |loss difference| over the first " +
                          $"{agreement.Max(a => a.Steps)} steps (at most {LossSteps}) between each pair, against a tolerance of " +
                          $"{Number(agreement[0].Tolerance, "0.000")} nats: the larger of {LossTolerance} nats and the difference between the two " +
                          "PyTorch attentions (unfused and SDPA: the same math, rounded differently), the bf16 noise of this run.");
            md.AppendLine();
            md.AppendLine("| pair | steps | max abs loss diff | at step | step 0 diff | within tolerance |");
            md.AppendLine("|---|---:|---:|---:|---:|---|");
            foreach (var a in agreement)
                md.AppendLine($"| {TrainAttention.Impl(a.A)} vs {TrainAttention.Impl(a.B)} | {a.Steps} | {Number(a.MaxDifference, "0.0000")} | {a.AtStep} | " +
                              $"{Number(a.FirstStepDifference, "0.0000")} | {(a.Pass ? "yes" : "**no**")} |");
        }
        md.AppendLine();

        md.AppendLine("## Issue 8's targets");
        md.AppendLine();
        md.AppendLine("| target | required | measured | result |");
        md.AppendLine("|---|---:|---:|---|");
        foreach (var t in Targets(summary))
        {
            bool share = t.Required < 1;
            string required = share ? $"{t.Required:0.0%}" : $"{t.Required:0.0}x";
            string actual = t.Actual is not { } x ? "-" : double.IsPositiveInfinity(x) ? "unbounded" : share ? $"{x:0.0%}" : $"{x:0.00}x";
            string verdict = t.Pass switch { true => "PASS", false => "**FAIL**", null => "not judged" };
            md.AppendLine($"| {t.Name} | {required} | {actual} | {verdict}{(t.Note is null ? "" : $" ({Cell(t.Note)})")} |");
        }
        md.AppendLine();

        if (plots.Count > 0)
        {
            md.AppendLine("## Plots");
            md.AppendLine();
            foreach (var (file, caption) in plots) md.AppendLine($"![{caption}]({file})");
            md.AppendLine();
        }
        return md.ToString().Replace("\r\n", "\n", StringComparison.Ordinal);
    }

    /// <summary>2048 -> "2k", 65536 -> "64k", 1000 -> "1000".</summary>
    public static string Tokens(int context) =>
        context >= 1024 && context % 1024 == 0 ? $"{context / 1024}k" : context.ToString(CultureInfo.InvariantCulture);

    private static string Number(double x, string format) => double.IsFinite(x) ? x.ToString(format, CultureInfo.InvariantCulture) : "-";

    private static string Ratio(double? x) => x is { } r && double.IsFinite(r) ? $"{r.ToString("0.00", CultureInfo.InvariantCulture)}x" : "-";

    private static string Share(double? x) => x is { } s && double.IsFinite(s) ? $"{(100 * s).ToString("0.0", CultureInfo.InvariantCulture)}%" : "-";

    private static string Cell(string? text) => (text ?? "").Replace("|", "/", StringComparison.Ordinal).Replace("\n", " ", StringComparison.Ordinal);
}
