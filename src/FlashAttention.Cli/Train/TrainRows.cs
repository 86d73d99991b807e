using System.Text.Json;
using System.Text.Json.Serialization;
using FlashAttn.Training;

namespace FlashAttn.Cli.Train;

/// <summary>
/// A row of train.json in DESIGN.md's results format: impl (ours, torch-sdpa, unfused), op "train", mode "fwdbwd", dtype, batch,
/// seqlen_q = seqlen_k = context, heads, heads_kv, headdim, causal, ms (mean step time after warm-up), tflops (model FLOPs per
/// second: 6 per matmul weight and token plus causal attention), device, run; the train keys tokens_per_s, peak_mem_mib and layers;
/// and params, steps, seed, the per-step losses, largest_context and the context sweep's probes (when it ran), and failure (when
/// the run did not train).
/// </summary>
internal sealed record TrainRow
{
    public required string Impl { get; init; }
    public string Op { get; init; } = "train";
    public string Mode { get; init; } = "fwdbwd";
    public required string Dtype { get; init; }
    public required int Batch { get; init; }
    public required int SeqlenQ { get; init; }
    public required int SeqlenK { get; init; }
    public required int Heads { get; init; }
    public required int HeadsKv { get; init; }
    public required int Headdim { get; init; }
    public bool Causal { get; init; } = true;
    public required double Ms { get; init; }
    public required double Tflops { get; init; }
    public required string Device { get; init; }
    public required string Run { get; init; }
    public required double TokensPerS { get; init; }
    public required double PeakMemMib { get; init; }
    public required int Layers { get; init; }
    public required long Params { get; init; }
    public required int Steps { get; init; }
    public required int Seed { get; init; }

    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public int? LargestContext { get; init; }

    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Failure { get; init; }

    public required double[] Losses { get; init; }

    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public SweepProbe[]? ContextSweep { get; init; }
}

/// <summary>One context of the sweep: trained or not, its peak memory, and why not.</summary>
internal sealed record SweepProbe(int Context, bool Trained, double PeakMemMib, [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Failure);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals)]
[JsonSerializable(typeof(TrainRow))]
internal sealed partial class TrainJson : JsonSerializerContext;

/// <summary>train.json: the rows of one `flash-attn train` invocation, one per line.</summary>
internal static class TrainRows
{
    /// <summary>The element type of the trained weights and activations.</summary>
    public const string Dtype = "bf16";

    private const double MiB = 1024.0 * 1024;

    public static IReadOnlyList<TrainRow> From(TrainSummary summary)
    {
        var c = summary.Config;
        double flopsPerToken = ModelSize.TrainFlopsPerToken(c, summary.Context);
        return [.. summary.Runs.Select(run =>
        {
            bool trained = run.Trained;
            double tokensPerSecond = trained ? run.Result.TokensPerSecond : 0;
            return new TrainRow
            {
                Impl = TrainAttention.Impl(run.Kind),
                Dtype = Dtype,
                Batch = run.Result.Settings.Batch,
                SeqlenQ = run.Result.Settings.Context,
                SeqlenK = run.Result.Settings.Context,
                Heads = c.Heads,
                HeadsKv = c.KvHeads,
                Headdim = c.HeadDim,
                Ms = Significant(trained ? run.MeanStepMs : 0),
                Tflops = Significant(tokensPerSecond * flopsPerToken / 1e12),
                Device = summary.Device,
                Run = summary.Run,
                TokensPerS = Math.Round(tokensPerSecond, 1),
                PeakMemMib = Math.Round(run.Result.PeakMemoryBytes / MiB, 1),
                Layers = c.Layers,
                Params = ModelSize.Parameters(c),
                Steps = run.Result.Steps.Count,
                Seed = run.Result.Settings.Seed,
                LargestContext = run.LargestContext,
                Failure = trained ? null : run.Result.Failure ?? "did not finish its steps",
                Losses = [.. run.Losses.Select(l => Math.Round(l, 5))],
                ContextSweep = run.Sweep?.Select(p => new SweepProbe(p.Context, p.Trained, Math.Round(p.PeakMemoryBytes / MiB, 1), p.Failure)).ToArray(),
            };
        })];
    }

    /// <summary>Writes the rows to <paramref name="path"/>, one per line (readable, and diffs show which rows changed).</summary>
    public static void Save(string path, IReadOnlyList<TrainRow> rows)
    {
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder is not null) Directory.CreateDirectory(folder);
        string text = "[\n" + string.Join(",\n", rows.Select(r => "  " + JsonSerializer.Serialize(r, TrainJson.Default.TrainRow))) + "\n]\n";
        File.WriteAllText(path, text);
    }

    private static double Significant(double x) =>
        x == 0 || !double.IsFinite(x) ? x : Math.Round(x, Math.Clamp(4 - (int)Math.Floor(Math.Log10(Math.Abs(x))) - 1, 0, 15));
}
