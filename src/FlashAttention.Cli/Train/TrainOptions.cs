using FlashAttn.Training;

namespace FlashAttn.Cli.Train;

/// <summary>`flash-attn train`'s options as given; null means "the default", which may need a search (<see cref="ExperimentPlan"/>).</summary>
/// <param name="Attentions">The attentions to train, in <see cref="TrainAttention.All"/>'s order.</param>
/// <param name="Layers">Decoder layers; null: the most the unfused baseline trains at batch 1 (the tiny model's 2 with <paramref name="Tiny"/>).</param>
/// <param name="Batch">Sequences per step; null: the largest the unfused baseline takes (up to 8), or <see cref="TinyBatch"/> with <paramref name="Tiny"/>.</param>
/// <param name="Context">Tokens per sequence; null: 4096, or 256 with <paramref name="Tiny"/>.</param>
/// <param name="Steps">Optimizer steps of each run.</param>
/// <param name="Seed">Seed of weights and data order, the same for every attention.</param>
/// <param name="ContextSweep">Find each attention's longest trainable context; null: on, except with <paramref name="Tiny"/>.</param>
/// <param name="Tiny">The tiny model (<see cref="LlamaConfig.Tiny"/>): a smoke run of a minute.</param>
/// <param name="OutputDirectory">Where train.json, the plots and report.md go.</param>
/// <param name="Corpus">A text file or folder; null: <see cref="Training.Data.TextCorpus.DefaultPath"/>.</param>
internal sealed record TrainOptions(IReadOnlyList<AttentionKind> Attentions, int? Layers, int? Batch, int? Context, int Steps, int Seed, bool? ContextSweep,
    bool Tiny, string OutputDirectory, string? Corpus)
{
    public const int DefaultContext = 4096, TinyContext = 256, TinyBatch = 4, DefaultSteps = 50, DefaultSeed = 1234;

    public static readonly string DefaultOutput = Path.Combine("bench", "results", "train");

    /// <summary>The context the main runs use.</summary>
    public int EffectiveContext => Context ?? (Tiny ? TinyContext : DefaultContext);

    /// <summary>Whether the longest-context sweep runs.</summary>
    public bool Sweep => ContextSweep ?? !Tiny;
}
