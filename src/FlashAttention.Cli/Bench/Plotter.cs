using System.Globalization;
using ScottPlot;

namespace FlashAttn.Cli.Bench;

/// <summary>
/// Throughput against sequence length, one panel per mode, one line per (impl, dtype, headdim, causal): a colour per
/// (dtype, headdim, causal) and a line pattern and marker per impl ("ours" solid with filled markers); the run's FMA
/// peak as a dotted line when given. The x axis is log2(seqlen). One legend, right of the last panel, serves all panels.
/// </summary>
internal static class Plotter
{
    /// <summary>The y axis: GFLOP/s (CPU) or TFLOP/s (GPU).</summary>
    public enum Unit
    {
        Gflops,
        Tflops,
    }

    private const int PanelWidth = 560, LegendWidth = 220, Height = 520;

    private static readonly (LinePattern Pattern, MarkerShape Marker)[] ImplStyles =
    [
        (LinePattern.Solid, MarkerShape.FilledCircle),
        (LinePattern.Dashed, MarkerShape.OpenCircle),
        (LinePattern.Dotted, MarkerShape.FilledSquare),
        (LinePattern.DenselyDashed, MarkerShape.OpenSquare),
        (LinePattern.Dashed, MarkerShape.FilledTriangleUp),
        (LinePattern.Dotted, MarkerShape.OpenTriangleUp),
    ];

    /// <param name="rows">The rows to draw.</param>
    /// <param name="path">PNG path; its folder is created.</param>
    /// <param name="title">Shown after the mode in each panel's title.</param>
    /// <param name="peakGflops">The run's fp32 FMA peak; 0 to leave the line out.</param>
    /// <param name="unit">GFLOP/s or TFLOP/s on the y axis.</param>
    public static void Save(IReadOnlyList<BenchRow> rows, string path, string title, double peakGflops, Unit unit = Unit.Gflops)
    {
        if (rows.Count == 0) throw new CliException("no attention rows to plot.");
        Func<BenchRow, double> y = unit == Unit.Tflops ? r => r.Tflops : r => r.Gflops;
        double peak = unit == Unit.Tflops ? peakGflops / 1000 : peakGflops;
        // GPU sweeps (TFLOP/s) cover three head dims with five impls each: one panel per (mode, head dim) keeps them
        // readable, and colours then only need to tell dtype and causal apart.
        bool byHeadDim = unit == Unit.Tflops;
        var panels = new List<(string Mode, int HeadDim)>();
        foreach (var m in BenchCase.Modes.Where(m => rows.Any(r => r.Mode == m)))
            panels.AddRange(byHeadDim ? rows.Where(r => r.Mode == m).Select(r => r.Headdim).Distinct().Order().Select(d => (m, d)) : [(m, 0)]);
        var seqlens = rows.Select(r => r.SeqlenQ).Distinct().Order().ToList();
        (string, int, bool) ColourKey(BenchRow r) => (r.Dtype, byHeadDim ? 0 : r.Headdim, r.Causal);
        var colours = rows.Select(ColourKey).Distinct().Order().ToList();
        var impls = rows.Select(r => r.Impl).Distinct().OrderBy(i => i != "ours").ToList();
        IPalette palette = colours.Count <= 10 ? new ScottPlot.Palettes.Category10() : new ScottPlot.Palettes.Category20();
        double yMax = Math.Max(rows.Max(y), peak) * 1.08;

        var plots = new List<Plot>();
        foreach (var (mode, headDim) in panels)
        {
            var plot = new Plot();
            plot.Font.Set("DejaVu Sans");
            plots.Add(plot);
            foreach (var group in rows.Where(r => r.Mode == mode && (headDim == 0 || r.Headdim == headDim)).GroupBy(r => (r.Impl, r.Dtype, r.Headdim, r.Causal))
                         .OrderBy(g => impls.IndexOf(g.Key.Impl)).ThenBy(g => colours.IndexOf(ColourKey(g.First()))))
            {
                var points = group.OrderBy(r => r.SeqlenQ).ToList();
                var line = plot.Add.Scatter(points.Select(r => Math.Log2(r.SeqlenQ)).ToArray(), points.Select(y).ToArray());
                var style = ImplStyles[impls.IndexOf(group.Key.Impl) % ImplStyles.Length];
                line.Color = palette.GetColor(colours.IndexOf(ColourKey(group.First())));
                line.LineWidth = 2;
                line.MarkerSize = 7;
                line.LinePattern = style.Pattern;
                line.MarkerShape = style.Marker;
                line.LegendText = $"{group.Key.Impl} {group.Key.Dtype}{(byHeadDim ? "" : $" d{group.Key.Headdim}")}{(group.Key.Causal ? " causal" : "")}";
            }
            if (peak > 0)
            {
                var peakLine = plot.Add.HorizontalLine(peak, 1.5f, Colors.Gray, LinePattern.Dotted);
                peakLine.LegendText = $"fp32 FMA peak ({peak:0})";
            }

            var ticks = new ScottPlot.TickGenerators.NumericManual();
            foreach (int s in seqlens) ticks.AddMajor(Math.Log2(s), s.ToString(CultureInfo.InvariantCulture));
            plot.Axes.Bottom.TickGenerator = ticks;
            double pad = seqlens.Count > 1 ? 0.25 : 1;
            plot.Axes.SetLimits(Math.Log2(seqlens[0]) - pad, Math.Log2(seqlens[^1]) + pad, 0, yMax);
            plot.Title($"{(mode == "fwdbwd" ? "fwd + bwd" : mode)}{(byHeadDim ? $" d{headDim}" : "")} | {title}", size: 13);
            plot.XLabel("sequence length", size: 13);
            plot.YLabel(unit == Unit.Tflops ? "TFLOP/s" : "GFLOP/s", size: 13);
            plot.HideLegend();
        }
        plots[^1].ShowLegend(Edge.Right);

        var multiplot = new Multiplot(plots[0]);
        foreach (var plot in plots.Skip(1)) multiplot.AddPlot(plot);
        multiplot.Layout = new ScottPlot.MultiplotLayouts.Columns();
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder is not null) Directory.CreateDirectory(folder);
        multiplot.SavePng(path, PanelWidth * panels.Count + LegendWidth, Height);
    }
}
