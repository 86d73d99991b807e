using FlashAttn.Cli.Train;
using FlashAttn.Training;

namespace FlashAttn.Tests.Training;

/// <summary>Fabricated training results for the CLI's pure parts: the plan, the report and the files, without torch.</summary>
internal static class TrainFakes
{
    public const long GiB = 1L << 30;

    public static LlamaConfig Model(int layers = 4) => LlamaConfig.Llama7B(layers, 50257);

    /// <summary>A run that trained: <paramref name="steps"/> steps of falling loss (plus <paramref name="lossOffset"/>), the given speed and peak.</summary>
    public static TrainResult Trained(AttentionKind kind, double tokensPerSecond, double peakGiB, int steps = 50, double lossOffset = 0, int batch = 1,
        int context = 4096, LlamaConfig? config = null)
    {
        var settings = new TrainSettings(kind, batch, context, steps);
        long tokens = (long)batch * context;
        var list = Enumerable.Range(0, steps)
            .Select(i => new StepResult(i, 10.8 - 0.1 * i + lossOffset, tokens / tokensPerSecond, tokens)).ToList();
        return new TrainResult(config ?? Model(), settings, list, tokensPerSecond, (long)(peakGiB * GiB), null);
    }

    public static TrainResult OutOfMemory(AttentionKind kind, int batch = 1, int context = 4096, LlamaConfig? config = null) =>
        new(config ?? Model(), new TrainSettings(kind, batch, context, 50), [], 0, 0, "out of memory at step 0");

    public static IReadOnlyList<Probe> Sweep(AttentionKind kind, int largest, IReadOnlyList<int>? contexts = null)
    {
        var list = new List<Probe>();
        foreach (int c in contexts ?? ExperimentPlan.SweepContexts)
        {
            bool trains = c <= largest;
            list.Add(new Probe(kind, 4, 1, c, trains, trains ? c * 1000L : 0, trains ? null : "out of memory at step 0"));
            if (!trains) break;
        }
        return list;
    }

    public static TrainSummary Summary(IReadOnlyList<AttentionRun> runs, bool sweep = true, int context = 4096) =>
        new(Model(), 1, context, 50, 1234, "Fake GPU", "2026-11-26T10:00:00Z", "/usr/share/common-licenses", 14, 58_209,
            "GPT-2 BPE", runs, sweep ? ExperimentPlan.SweepContexts : [], ["Layers: 4 (--layers)."]);

    /// <summary>The article-like outcome: ours 3x unfused's speed with 55% less memory, SDPA a little slower than ours.</summary>
    public static TrainSummary Article() => Summary(
    [
        new AttentionRun(AttentionKind.Unfused, Trained(AttentionKind.Unfused, 1000, 40), Sweep(AttentionKind.Unfused, 4096)),
        new AttentionRun(AttentionKind.Sdpa, Trained(AttentionKind.Sdpa, 2800, 19, lossOffset: 0.002), Sweep(AttentionKind.Sdpa, 32768)),
        new AttentionRun(AttentionKind.Flash, Trained(AttentionKind.Flash, 3000, 18, lossOffset: -0.003), Sweep(AttentionKind.Flash, 32768)),
    ]);
}

/// <summary>A backend without torch: trains whatever <see cref="Trains"/> allows, with fabricated speeds, peaks and losses.</summary>
internal sealed class FakeBackend : ITrainBackend
{
    public string? Unavailable { get; init; }

    public string DeviceName => "Fake GPU 80GB";

    public long DeviceBytes => 80L << 30;

    public int Estimate { get; init; } = 4;

    public Func<LlamaConfig, TrainSettings, bool> Trains { get; init; } = (_, _) => true;

    public List<(LlamaConfig Config, TrainSettings Settings)> Calls { get; } = [];

    public TrainResult Run(LlamaConfig config, TrainSettings settings, ITokenSource data, IProgress<StepResult>? progress, CancellationToken ct)
    {
        Calls.Add((config, settings));
        if (!Trains(config, settings)) return TrainFakes.OutOfMemory(settings.Attention, settings.Batch, settings.Context, config);
        double speed = settings.Attention switch { AttentionKind.Unfused => 1000, AttentionKind.Sdpa => 2800, _ => 3000 };
        double peak = settings.Attention == AttentionKind.Unfused ? 40 : 18;
        long tokens = (long)settings.Batch * settings.Context;
        var steps = new List<StepResult>();
        for (int i = 0; i < settings.Steps; i++)
        {
            long[] batch = data.Next(settings.Batch, settings.Context);
            if (batch.Length != tokens + settings.Batch) throw new InvalidOperationException("wrong batch shape");
            var step = new StepResult(i, 10.8 - 0.05 * i, tokens / speed, tokens);
            steps.Add(step);
            progress?.Report(step);
        }
        return new TrainResult(config, settings, steps, speed, (long)(peak * TrainFakes.GiB), null);
    }

    public int EstimateMaxLayers(LlamaConfig perLayerShape, long deviceBytes, int context, AttentionKind kind) => Estimate;
}
