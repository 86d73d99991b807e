using System.CommandLine;
using FlashAttn.Cli.Train;
using FlashAttn.Training.Data;

namespace FlashAttn.Cli.Commands;

/// <summary>`flash-attn train`: issue 8's reproduction of the FlashAttention-2 article's experiment (a LLaMA-7B-shaped model trained at
/// context 4096 with the unfused attention, TorchSharp's SDPA and ours: tokens/s, peak memory, longest context, loss agreement).
/// The options become <see cref="TrainOptions"/>; the run is <see cref="TrainSession"/>.</summary>
internal static class TrainCommand
{
    public static Command Create() => Create(() => new TorchTrainBackend());

    /// <summary>The command over a given backend (tests pass a fake one).</summary>
    public static Command Create(Func<ITrainBackend> backend)
    {
        var attention = new Option<string[]>("--attention")
        {
            Description = "Attentions to train: unfused, sdpa (TorchSharp's scaled_dot_product_attention), flash (ours) or all; several allowed (default all).",
            AllowMultipleArgumentsPerToken = true,
        };
        attention.AcceptOnlyFromAmong(TrainAttention.OptionNames);
        var layers = new Option<int?>("--layers")
        {
            Description = "Decoder layers of LLaMA-7B's shape (default: the most the unfused baseline trains at batch 1 and the context, found by " +
                          $"{ExperimentPlan.ProbeSteps}-step probes from an estimate, at most {ExperimentPlan.MaxLayers}).",
        };
        var batch = new Option<int?>("--batch")
        {
            Description = $"Sequences per step (default: the largest batch the unfused baseline takes at those layers, found the same way, at most {ExperimentPlan.MaxBatch}; " +
                          $"{TrainOptions.TinyBatch} with --tiny).",
        };
        var context = new Option<int?>("--context") { Description = $"Tokens per sequence (default {TrainOptions.DefaultContext}; {TrainOptions.TinyContext} with --tiny)." };
        var steps = new Option<int?>("--steps") { Description = $"Optimizer steps per attention (default {TrainOptions.DefaultSteps})." };
        var seed = new Option<int?>("--seed") { Description = $"Seed of the weights and the data order, the same for every attention (default {TrainOptions.DefaultSeed})." };
        var sweep = new Option<bool?>("--max-context-sweep")
        {
            Description = "Find each attention's longest trainable context at batch 1 among " +
                          string.Join(", ", ExperimentPlan.SweepContexts.Select(TrainReport.Tokens)) + $", {ExperimentPlan.ProbeSteps} steps each " +
                          "(default on; off with --tiny; `--max-context-sweep false` turns it off).",
        };
        var tiny = new Option<bool>("--tiny") { Description = "Smoke run: the tiny model (2 layers, hidden 256), context 256, no search." };
        var output = new Option<string?>("--out") { Description = $"Folder for train.json, the PNG plots and report.md (default {TrainOptions.DefaultOutput})." };
        var corpus = new Option<string?>("--corpus")
        {
            Description = $"Text file or folder to train on (default {TextCorpus.DefaultPath}: the licence texts every Debian and Ubuntu system ships; " +
                          "small, so training cycles over it).",
        };

        var command = new Command("train",
            "Train a LLaMA-7B-shaped model with the unfused attention, TorchSharp SDPA and ours (needs a CUDA GPU and libtorch): tokens/s, " +
            "peak memory, longest context and loss agreement, as train.json, plots and report.md.")
        {
            attention, layers, batch, context, steps, seed, sweep, tiny, output, corpus,
        };
        command.SetGuardedAction((parseResult, ct) =>
        {
            var options = new TrainOptions(
                TrainAttention.Parse(parseResult.GetValue(attention)),
                parseResult.GetValue(layers),
                parseResult.GetValue(batch),
                parseResult.GetValue(context),
                parseResult.GetValue(steps) ?? TrainOptions.DefaultSteps,
                parseResult.GetValue(seed) ?? TrainOptions.DefaultSeed,
                parseResult.GetValue(sweep),
                parseResult.GetValue(tiny),
                parseResult.GetValue(output) ?? TrainOptions.DefaultOutput,
                parseResult.GetValue(corpus));
            return TrainSession.Execute(options, backend(), ct);
        });
        return command;
    }
}
