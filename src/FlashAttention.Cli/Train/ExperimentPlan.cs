using FlashAttn.Training;

namespace FlashAttn.Cli.Train;

/// <summary>Trains one configuration (fresh weights and data for every call) and says how it went; never throws for running out of memory.</summary>
internal delegate TrainResult TrainRunner(LlamaConfig config, TrainSettings settings);

/// <summary>One short trial run of the searches: did this shape train?</summary>
internal sealed record Probe(AttentionKind Attention, int Layers, int Batch, int Context, bool Trained, long PeakMemoryBytes, string? Failure)
{
    public static Probe From(TrainResult result) =>
        new(result.Settings.Attention, result.Config.Layers, result.Settings.Batch, result.Settings.Context, Succeeded(result), result.PeakMemoryBytes,
            result.Failure);

    /// <summary>A run trained when it reports no failure and every step it was asked for, each with a finite loss.</summary>
    public static bool Succeeded(TrainResult result) =>
        result.Failure is null && result.Steps.Count >= result.Settings.Steps && result.Steps.All(s => double.IsFinite(s.Loss));
}

/// <summary>The value a search settled on (null when nothing trained) and the probes behind it, in the order they ran.</summary>
internal sealed record SearchResult(int? Value, IReadOnlyList<Probe> Probes);

/// <summary>
/// The searches behind `flash-attn train`'s defaults, each a series of <see cref="ProbeSteps"/>-step runs: the most LLaMA-7B layers
/// the unfused baseline trains at batch 1 (from an estimate, stepping up while it trains and down while it does not), the largest
/// batch it then takes (up to <see cref="MaxBatch"/>), and each attention's longest trainable context at batch 1 among
/// <see cref="SweepContexts"/>. Memory grows with each of these, so the first failure ends a search upward.
/// </summary>
internal static class ExperimentPlan
{
    /// <summary>Steps of one probe: the optimizer's state exists from the first step on, so a shape that takes three takes fifty.</summary>
    public const int ProbeSteps = 3;

    /// <summary>Cap on the searched batch.</summary>
    public const int MaxBatch = 8;

    /// <summary>Cap on the searched layers: LLaMA-7B's depth.</summary>
    public const int MaxLayers = 32;

    /// <summary>The contexts of the longest-context sweep: 2k to 64k.</summary>
    public static readonly IReadOnlyList<int> SweepContexts = [2048, 4096, 8192, 16384, 32768, 65536];

    /// <summary>The settings of a probe: <see cref="ProbeSteps"/> steps, one of them warm-up.</summary>
    public static TrainSettings ProbeSettings(AttentionKind attention, int batch, int context, int seed) =>
        new(attention, batch, context, ProbeSteps, seed, WarmupSteps: 1);

    /// <summary>The most layers of <paramref name="shape"/> (its own Layers ignored) that <paramref name="attention"/> trains at batch 1.</summary>
    /// <param name="run">Trains a configuration.</param>
    /// <param name="shape">The layer shape.</param>
    /// <param name="estimate">Where to start (clamped to 1..<paramref name="maxLayers"/>).</param>
    /// <param name="context">Tokens per sequence.</param>
    /// <param name="seed">Seed of the probes.</param>
    /// <param name="maxLayers">Never more layers than this.</param>
    /// <param name="attention">The attention that must train (the unfused baseline).</param>
    public static SearchResult FindLayers(TrainRunner run, LlamaConfig shape, int estimate, int context, int seed, int maxLayers = MaxLayers,
        AttentionKind attention = AttentionKind.Unfused)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLayers, 1);
        var probes = new List<Probe>();
        bool Trains(int layers)
        {
            var probe = Probe.From(run(shape with { Layers = layers }, ProbeSettings(attention, 1, context, seed)));
            probes.Add(probe);
            return probe.Trained;
        }

        int layers = Math.Clamp(estimate, 1, maxLayers);
        if (Trains(layers))
        {
            while (layers < maxLayers && Trains(layers + 1)) layers++;
            return new(layers, probes);
        }
        for (layers--; layers >= 1; layers--)
            if (Trains(layers)) return new(layers, probes);
        return new(null, probes);
    }

    /// <summary>The largest batch up to <paramref name="maxBatch"/> that <paramref name="attention"/> trains <paramref name="config"/> at.</summary>
    /// <param name="batchOneTrains">Batch 1 is already known to train (the layer search ran at batch 1): do not probe it again.</param>
    public static SearchResult FindBatch(TrainRunner run, LlamaConfig config, int context, int seed, bool batchOneTrains, int maxBatch = MaxBatch,
        AttentionKind attention = AttentionKind.Unfused)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBatch, 1);
        var probes = new List<Probe>();
        bool Trains(int batch)
        {
            var probe = Probe.From(run(config, ProbeSettings(attention, batch, context, seed)));
            probes.Add(probe);
            return probe.Trained;
        }

        if (!batchOneTrains && !Trains(1)) return new(null, probes);
        int best = 1;
        while (best < maxBatch && Trains(best + 1)) best++;
        return new(best, probes);
    }

    /// <summary>The longest of <paramref name="contexts"/> (ascending) that <paramref name="attention"/> trains at batch 1, trying them in
    /// order until one fails; null when the first fails.</summary>
    public static SearchResult LargestContext(TrainRunner run, LlamaConfig config, AttentionKind attention, IReadOnlyList<int> contexts, int seed)
    {
        var probes = new List<Probe>();
        int? best = null;
        foreach (int context in contexts)
        {
            var probe = Probe.From(run(config, ProbeSettings(attention, 1, context, seed)));
            probes.Add(probe);
            if (!probe.Trained) break;
            best = context;
        }
        return new(best, probes);
    }
}
