using FlashAttn.Training;

namespace FlashAttn.Cli.Train;

/// <summary>One attention's part of the experiment: its full run and, when the sweep ran, its longest trainable context.</summary>
/// <param name="Kind">The attention.</param>
/// <param name="Result">The main run (all steps at the experiment's batch and context).</param>
/// <param name="Sweep">The context sweep's probes, in order; null when the sweep did not run.</param>
internal sealed record AttentionRun(AttentionKind Kind, TrainResult Result, IReadOnlyList<Probe>? Sweep = null)
{
    /// <summary>The run trained every step.</summary>
    public bool Trained => Probe.Succeeded(Result);

    /// <summary>Per-step losses, in step order.</summary>
    public IReadOnlyList<double> Losses => [.. Result.Steps.OrderBy(s => s.Step).Select(s => s.Loss)];

    /// <summary>Mean wall time of a step after the warm-up steps (of all steps when there are no others), in ms; NaN without steps.</summary>
    public double MeanStepMs
    {
        get
        {
            var steps = Result.Steps.OrderBy(s => s.Step).ToList();
            var timed = steps.Count > Result.Settings.WarmupSteps ? steps.Skip(Result.Settings.WarmupSteps).ToList() : steps;
            return timed.Count == 0 ? double.NaN : timed.Average(s => s.Seconds) * 1000;
        }
    }

    /// <summary>The longest context of the sweep that trained; null when none did or the sweep did not run.</summary>
    public int? LargestContext => Sweep?.Where(p => p.Trained).Select(p => (int?)p.Context).Max();

    /// <summary>Whether the sweep ran out of contexts to try before this attention failed (so its limit lies beyond the largest context).</summary>
    public bool SweepCapped(IReadOnlyList<int> contexts) => Sweep is { Count: > 0 } sweep && sweep.Count == contexts.Count && sweep.All(p => p.Trained);
}

/// <summary>Everything `flash-attn train` measured, as the report, the JSON rows and the plots need it.</summary>
/// <param name="Config">The model (layers included).</param>
/// <param name="Batch">Sequences per step.</param>
/// <param name="Context">Tokens per sequence.</param>
/// <param name="Steps">Optimizer steps of each main run.</param>
/// <param name="Seed">Seed of weights and data order (the same for every attention).</param>
/// <param name="Device">The GPU's name.</param>
/// <param name="Run">UTC start time, ISO 8601.</param>
/// <param name="Corpus">Where the text came from.</param>
/// <param name="CorpusDocuments">Documents in it.</param>
/// <param name="CorpusTokens">Tokens in it.</param>
/// <param name="Tokenizer">The tokenizer's name.</param>
/// <param name="Runs">One entry per attention run, in <see cref="TrainAttention.All"/>'s order.</param>
/// <param name="SweepContexts">The contexts the sweep tried (empty when it did not run).</param>
/// <param name="Notes">How layers and batch were chosen, and anything else the reader should know.</param>
internal sealed record TrainSummary(LlamaConfig Config, int Batch, int Context, int Steps, int Seed, string Device, string Run, string Corpus,
    int CorpusDocuments, long CorpusTokens, string Tokenizer, IReadOnlyList<AttentionRun> Runs, IReadOnlyList<int> SweepContexts, IReadOnlyList<string> Notes)
{
    /// <summary>The run of <paramref name="kind"/>; null when it was not selected.</summary>
    public AttentionRun? Of(AttentionKind kind) => Runs.FirstOrDefault(r => r.Kind == kind);

    /// <summary>Whether the sweep ran.</summary>
    public bool SweepRan => SweepContexts.Count > 0;
}
