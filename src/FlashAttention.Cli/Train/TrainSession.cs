using System.Globalization;
using FlashAttn.Cli.Bench;
using FlashAttn.Training;
using FlashAttn.Training.Data;
using Spectre.Console;

namespace FlashAttn.Cli.Train;

/// <summary>
/// `flash-attn train` from options to files: checks the machine, tokenises the corpus, settles layers and batch (searching for them
/// unless given), trains each attention with the same seed, runs the longest-context sweep, then writes train.json, the plots and
/// report.md into the output folder and prints the table and the targets.
/// </summary>
internal static class TrainSession
{
    /// <summary>Exit code when this machine cannot train (no CUDA GPU or no libtorch).</summary>
    public const int NoDevice = 2;

    public const string JsonFile = "train.json", ReportFile = "report.md";

    public static int Execute(TrainOptions options, ITrainBackend backend, CancellationToken ct)
    {
        if (options.Steps < 1) throw new CliException($"--steps must be at least 1; got {options.Steps}.");
        if (options.Layers is < 1) throw new CliException($"--layers must be at least 1; got {options.Layers}.");
        if (options.Batch is < 1) throw new CliException($"--batch must be at least 1; got {options.Batch}.");
        if (options.Context is < 1) throw new CliException($"--context must be at least 1; got {options.Context}.");
        if (backend.Unavailable is { } reason)
        {
            AnsiConsole.MarkupLine($"[red]flash-attn train needs a CUDA GPU and libtorch, and cannot train here:[/] {Markup.Escape(reason)}");
            AnsiConsole.MarkupLine("On the GPU machine, `bash scripts/run-device.sh train` sets LD_LIBRARY_PATH to its torch/lib and runs it.");
            return NoDevice;
        }

        string run = ResultsFile.FormatRun(DateTime.UtcNow);
        var corpus = TokenizedCorpus.Load(options.Corpus);
        AnsiConsole.MarkupLine($"GPU: [bold]{Markup.Escape(backend.DeviceName)}[/] ({backend.DeviceBytes / (1024.0 * 1024 * 1024):0.0} GiB)");
        AnsiConsole.MarkupLine($"Corpus: {Markup.Escape(corpus.Source)}: {corpus.Documents} documents, {corpus.Count:N0} tokens ({Markup.Escape(corpus.Tokenizer)})");

        int context = options.EffectiveContext;
        var notes = new List<string>();
        var runs = new List<AttentionRun>();
        LlamaConfig config = null!;
        int batch = 0;
        TrainSummary Summarise(IReadOnlyList<AttentionRun> attentionRuns, bool sweep, IReadOnlyList<string> summaryNotes) =>
            new(config, batch, context, options.Steps, options.Seed, backend.DeviceName, run, corpus.Source, corpus.Documents, corpus.Count,
                corpus.Tokenizer, attentionRuns, sweep ? ExperimentPlan.SweepContexts : [], summaryNotes);
        AnsiConsole.Progress().AutoClear(false).HideCompleted(true)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var progress = new RunProgress(ctx, backend, corpus, ct);
                (config, batch) = Settle(options, backend, corpus.VocabSize, context, progress, notes);
                AnsiConsole.MarkupLine($"Model: {config.Layers} layers, {ModelSize.Format(ModelSize.Parameters(config))} parameters; batch {batch}, context {context}, " +
                                       $"{options.Steps} steps, seed {options.Seed}");

                var results = new Dictionary<AttentionKind, TrainResult>();
                foreach (var kind in options.Attentions)
                    results[kind] = progress.Run($"train {TrainAttention.Impl(kind)}", config,
                        new TrainSettings(kind, batch, context, options.Steps, options.Seed));
                var sweeps = new Dictionary<AttentionKind, IReadOnlyList<Probe>>();
                if (options.Sweep)
                {
                    // The sweep takes minutes: keep the main runs' results should it not finish (a time limit, Ctrl+C).
                    var interim = Summarise([.. options.Attentions.Select(k => new AttentionRun(k, results[k]))], sweep: false,
                        [.. notes, "Interim results, written before the context sweep; a finished run replaces them."]);
                    Save(interim, options.OutputDirectory);
                }
                if (options.Sweep)
                    foreach (var kind in options.Attentions)
                    {
                        var sweep = ExperimentPlan.LargestContext((c, s) => progress.Run($"context sweep {TrainAttention.Impl(kind)} {TrainReport.Tokens(s.Context)}", c, s),
                            config, kind, ExperimentPlan.SweepContexts, options.Seed);
                        sweeps[kind] = sweep.Probes;
                    }
                runs.AddRange(options.Attentions.Select(k => new AttentionRun(k, results[k], sweeps.GetValueOrDefault(k))));
            });

        var summary = Summarise(runs, options.Sweep, notes);
        var saved = Save(summary, options.OutputDirectory);
        AnsiConsole.Write(Table(summary));
        AnsiConsole.Write(TargetsTable(summary));
        foreach (var a in TrainReport.Agreement(summary))
            AnsiConsole.MarkupLine($"Loss agreement {TrainAttention.Impl(a.A)} vs {TrainAttention.Impl(a.B)}: max |diff| {a.MaxDifference:0.0000} over {a.Steps} steps " +
                                   $"(step {a.AtStep}; tolerance {a.Tolerance:0.000}) {(a.Pass ? "[green]agree[/]" : "[red]differ[/]")}");
        foreach (string path in saved) AnsiConsole.MarkupLine($"Wrote {Markup.Escape(path)}");
        return runs.Any(r => r.Trained) ? 0 : GuardedAction.Failure;
    }

    /// <summary>Writes train.json, the plots and report.md; returns their paths.</summary>
    public static IReadOnlyList<string> Save(TrainSummary summary, string directory)
    {
        Directory.CreateDirectory(directory);
        string json = Path.Combine(directory, JsonFile);
        TrainRows.Save(json, TrainRows.From(summary));
        var plots = TrainPlots.Save(summary, directory);
        string report = Path.Combine(directory, ReportFile);
        File.WriteAllText(report, TrainReport.Markdown(summary, plots));
        return [json, .. plots.Select(p => Path.Combine(directory, p.File)), report];
    }

    /// <summary>The model and batch: as given, the tiny defaults, or found by probing the unfused baseline.</summary>
    private static (LlamaConfig Config, int Batch) Settle(TrainOptions options, ITrainBackend backend, int vocab, int context, RunProgress progress,
        List<string> notes)
    {
        if (options.Tiny)
        {
            var tiny = LlamaConfig.Tiny(vocab);
            if (options.Layers is { } l) tiny = tiny with { Layers = l };
            notes.Add("The tiny model (--tiny): a smoke run, not the article's shape.");
            return (tiny, options.Batch ?? TrainOptions.TinyBatch);
        }

        TrainResult Trial(LlamaConfig c, TrainSettings s) =>
            progress.Run($"probe {TrainAttention.Impl(s.Attention)} {c.Layers} layers batch {s.Batch} context {TrainReport.Tokens(s.Context)}", c, s);

        int layers;
        bool batchOneTrains = false;
        if (options.Layers is { } given)
        {
            layers = given;
            notes.Add($"Layers: {layers} (--layers).");
        }
        else
        {
            var shape = LlamaConfig.Llama7B(1, vocab);
            int estimate = backend.EstimateMaxLayers(shape, backend.DeviceBytes, context, AttentionKind.Unfused);
            var search = ExperimentPlan.FindLayers(Trial, shape, estimate, context, options.Seed);
            if (search.Value is not { } found)
                throw new CliException($"the unfused baseline does not train even 1 layer at batch 1, context {context} on this GPU " +
                                       $"({search.Probes.LastOrDefault()?.Failure ?? "no probe ran"}); pass --layers and --batch to choose the shape.");
            layers = found;
            batchOneTrains = true;
            notes.Add($"Layers: {layers}, the most the unfused baseline trains at batch 1, context {context} ({ExperimentPlan.ProbeSteps}-step probes from " +
                      $"the estimate {estimate}: {Describe(search.Probes, p => $"{p.Layers} layers")}).");
        }

        var config = LlamaConfig.Llama7B(layers, vocab);
        if (options.Batch is { } b)
        {
            notes.Add($"Batch: {b} (--batch).");
            return (config, b);
        }
        var batchSearch = ExperimentPlan.FindBatch(Trial, config, context, options.Seed, batchOneTrains);
        if (batchSearch.Value is not { } batch)
        {
            notes.Add($"Batch: 1, though the unfused baseline does not train {layers} layers even at batch 1 ({batchSearch.Probes[0].Failure}).");
            return (config, 1);
        }
        notes.Add($"Batch: {batch}, the largest the unfused baseline takes at {layers} layers (up to {ExperimentPlan.MaxBatch}" +
                  (batchSearch.Probes.Count > 0 ? $"; probes: {Describe(batchSearch.Probes, p => $"batch {p.Batch}")}" : "") + ").");
        return (config, batch);
    }

    private static string Describe(IEnumerable<Probe> probes, Func<Probe, string> what) =>
        string.Join(", ", probes.Select(p => $"{what(p)} {(p.Trained ? "trains" : "fails")}"));

    private static Table Table(TrainSummary summary)
    {
        var table = new Table().Border(TableBorder.Rounded).Title($"{summary.Config.Layers} layers, batch {summary.Batch}, context {summary.Context}, {summary.Device}")
            .AddColumn("attention")
            .AddColumn(new TableColumn("tokens/s").RightAligned())
            .AddColumn(new TableColumn("vs unfused").RightAligned())
            .AddColumn(new TableColumn("peak GiB").RightAligned())
            .AddColumn(new TableColumn("memory saved").RightAligned())
            .AddColumn(new TableColumn("largest context").RightAligned());
        foreach (var row in TrainReport.Table(summary))
        {
            if (!row.Trained)
            {
                table.AddRow(Markup.Escape(TrainAttention.Label(row.Kind)), $"[red]failed[/] {Markup.Escape(row.Failure ?? "")}", "-", "-", "-", Markup.Escape(row.LargestContext));
                continue;
            }
            table.AddRow(Markup.Escape(TrainAttention.Label(row.Kind)),
                row.TokensPerSecond.ToString("0", CultureInfo.InvariantCulture),
                row.Speedup is { } s ? $"{s:0.00}x" : "-",
                row.PeakGiB.ToString("0.00", CultureInfo.InvariantCulture),
                row.MemorySaved is { } m ? $"{100 * m:0.0}%" : "-",
                Markup.Escape(row.LargestContext));
        }
        return table;
    }

    private static Table TargetsTable(TrainSummary summary)
    {
        var table = new Table().Border(TableBorder.Rounded).Title("Issue 8's targets").AddColumns("target", "measured", "result");
        foreach (var t in TrainReport.Targets(summary))
        {
            bool share = t.Required < 1;
            string actual = t.Actual is not { } x ? "-" : double.IsPositiveInfinity(x) ? "unbounded" : share ? $"{100 * x:0.0}%" : $"{x:0.00}x";
            string verdict = t.Pass switch { true => "[green]PASS[/]", false => "[red]FAIL[/]", null => "[yellow]not judged[/]" };
            table.AddRow(Markup.Escape(t.Name), actual, verdict + (t.Note is null ? "" : " " + Markup.Escape(t.Note)));
        }
        return table;
    }

    /// <summary>Runs one training with a progress bar of its steps and a line when it ends; a run that throws counts as failed.</summary>
    private sealed class RunProgress(ProgressContext context, ITrainBackend backend, TokenizedCorpus corpus, CancellationToken ct)
    {
        public TrainResult Run(string label, LlamaConfig config, TrainSettings settings)
        {
            ct.ThrowIfCancellationRequested();
            var task = context.AddTask(Markup.Escape(label), maxValue: settings.Steps);
            TrainResult result;
            try
            {
                result = backend.Run(config, settings, new CorpusTokenSource(corpus, settings.Seed), new StepReporter(task, label), ct);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                result = new TrainResult(config, settings, [], 0, 0, $"{e.GetType().Name}: {e.Message.Split('\n', 2)[0]}");
            }
            task.Value = task.MaxValue;
            task.StopTask();
            string outcome = Probe.Succeeded(result) && result.Steps.Count > 0
                ? $"[green]trains[/]: {result.TokensPerSecond:0} tokens/s, peak {result.PeakMemoryBytes / (1024.0 * 1024 * 1024):0.00} GiB, last loss {result.Steps[^1].Loss:0.000}"
                : $"[red]fails[/]: {Markup.Escape(result.Failure ?? $"{result.Steps.Count} of {settings.Steps} steps")}";
            AnsiConsole.MarkupLine($"{Markup.Escape(label)}: {outcome}");
            return result;
        }
    }

    /// <summary>Moves a task's bar with each step; synchronous, unlike <see cref="Progress{T}"/>, so the display follows the trainer.</summary>
    private sealed class StepReporter(ProgressTask task, string label) : IProgress<StepResult>
    {
        public void Report(StepResult value)
        {
            task.Value = Math.Min(task.MaxValue, value.Step + 1);
            task.Description = Markup.Escape($"{label}: step {value.Step + 1}, loss {value.Loss:0.000}, {value.Tokens / Math.Max(value.Seconds, 1e-9):0} tok/s");
        }
    }
}
