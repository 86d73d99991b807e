using ScottPlot;
using FlashAttn.Training;

namespace FlashAttn.Cli.Train;

/// <summary>The experiment's PNGs: the loss per step of each attention on one chart; tokens/s and peak memory as bars side by side;
/// the longest trainable context per attention as bars.</summary>
internal static class TrainPlots
{
    public const string LossFile = "loss.png", ThroughputFile = "throughput_memory.png", ContextFile = "max_context.png";

    private const int Width = 760, Height = 480;

    /// <summary>Draws the plots that have data into <paramref name="directory"/>; returns their file names with a caption each.</summary>
    public static IReadOnlyList<(string File, string Caption)> Save(TrainSummary summary, string directory)
    {
        Directory.CreateDirectory(directory);
        var saved = new List<(string, string)>();
        string title = $"{summary.Config.Layers}-layer LLaMA-7B shape, batch {summary.Batch}, context {summary.Context} | {summary.Device}";

        var withLosses = summary.Runs.Where(r => r.Result.Steps.Count > 0).ToList();
        if (withLosses.Count > 0)
        {
            var plot = NewPlot();
            foreach (var run in withLosses)
            {
                var losses = run.Losses;
                var line = plot.Add.Scatter(Enumerable.Range(0, losses.Count).Select(i => (double)i).ToArray(), losses.ToArray());
                line.Color = ColourOf(run.Kind);
                line.LineWidth = 2;
                line.MarkerSize = losses.Count > 60 ? 0 : 4;
                line.LinePattern = PatternOf(run.Kind);
                line.LegendText = TrainAttention.Label(run.Kind);
            }
            plot.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
            plot.Title($"Training loss | {title}", size: 12);
            plot.XLabel("step", size: 13);
            plot.YLabel("cross-entropy loss (nats)", size: 13);
            plot.ShowLegend(Alignment.UpperRight);
            plot.SavePng(Path.Combine(directory, LossFile), Width, Height);
            saved.Add((LossFile, "Loss per step"));
        }

        var trained = summary.Runs.Where(r => r.Trained).ToList();
        if (trained.Count > 0)
        {
            var speed = Bars(trained.Select(r => (r.Kind, r.Result.TokensPerSecond, $"{r.Result.TokensPerSecond:0}")).ToList());
            speed.Title("Training throughput", size: 13);
            speed.YLabel("tokens/s", size: 13);
            var memory = Bars(trained.Select(r => (r.Kind, r.Result.PeakMemoryBytes / (1024.0 * 1024 * 1024), $"{r.Result.PeakMemoryBytes / (1024.0 * 1024 * 1024):0.0} GiB")).ToList());
            memory.Title("Peak device memory", size: 13);
            memory.YLabel("GiB", size: 13);
            var multiplot = new Multiplot(speed);
            multiplot.AddPlot(memory);
            multiplot.Layout = new ScottPlot.MultiplotLayouts.Columns();
            multiplot.SavePng(Path.Combine(directory, ThroughputFile), 2 * Width * 3 / 4, Height);
            saved.Add((ThroughputFile, $"Tokens/s and peak memory ({title})"));
        }

        var swept = summary.Runs.Where(r => r.Sweep is not null).ToList();
        if (summary.SweepRan && swept.Count > 0)
        {
            var plot = Bars(swept.Select(r => (r.Kind, r.LargestContext is { } c ? c / 1024.0 : 0, TrainReport.ContextText(summary, r))).ToList());
            plot.Title($"Longest trainable context at batch 1 ({summary.Config.Layers} layers)", size: 13);
            plot.YLabel("context (k tokens)", size: 13);
            plot.SavePng(Path.Combine(directory, ContextFile), Width, Height);
            saved.Add((ContextFile, "Longest trainable context per attention"));
        }
        return saved;
    }

    private static Plot Bars(IReadOnlyList<(AttentionKind Kind, double Value, string Label)> values)
    {
        var plot = NewPlot();
        var bars = values.Select((v, i) => new Bar
        {
            Position = i,
            Value = v.Value,
            FillColor = ColourOf(v.Kind),
            Label = v.Label,
        }).ToList();
        var barPlot = plot.Add.Bars(bars);
        barPlot.ValueLabelStyle.FontSize = 13;
        plot.Axes.Bottom.SetTicks([.. values.Select((_, i) => (double)i)], [.. values.Select(v => TrainAttention.Label(v.Kind))]);
        plot.Axes.Margins(bottom: 0);
        plot.Axes.SetLimitsY(0, Math.Max(1e-9, values.Max(v => v.Value)) * 1.15);
        return plot;
    }

    private static Plot NewPlot()
    {
        var plot = new Plot();
        plot.Font.Set("DejaVu Sans");
        return plot;
    }

    private static Color ColourOf(AttentionKind kind) => kind switch
    {
        AttentionKind.Unfused => Colors.Gray,
        AttentionKind.Sdpa => new Color(31, 119, 180),
        _ => new Color(214, 39, 40),
    };

    private static LinePattern PatternOf(AttentionKind kind) => kind switch
    {
        AttentionKind.Unfused => LinePattern.Dotted,
        AttentionKind.Sdpa => LinePattern.Dashed,
        _ => LinePattern.Solid,
    };
}
