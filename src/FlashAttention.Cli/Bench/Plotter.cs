using System.Globalization;
using ScottPlot;

namespace FlashAttn.Cli.Bench;

/// <summary>
/// GFLOP/s against sequence length, one panel per mode, one line per (impl, dtype, headdim, causal): a colour per
/// (dtype, headdim, causal), solid with filled markers for ours, dashed with open markers for naive; the run's FMA peak as a dotted line. The x axis is
/// log2(seqlen). One legend, right of the last panel, serves all panels.
/// </summary>
internal static class Plotter
{
    private const int PanelWidth = 560, LegendWidth = 220, Height = 520;

    /// <param name="peakGflops">The run's fp32 FMA peak; 0 to leave the line out.</param>
    public static void Save(IReadOnlyList<BenchRow> rows, string path, string title, double peakGflops)
    {
        if (rows.Count == 0) throw new CliException("no attention rows to plot.");
        var modes = BenchCase.Modes.Where(m => rows.Any(r => r.Mode == m)).ToList();
        var seqlens = rows.Select(r => r.SeqlenQ).Distinct().Order().ToList();
        var colours = rows.Select(r => (r.Dtype, r.Headdim, r.Causal)).Distinct().Order().ToList();
        var palette = new ScottPlot.Palettes.Category10();
        double yMax = Math.Max(rows.Max(r => r.Gflops), peakGflops) * 1.08;

        var plots = new List<Plot>();
        foreach (var mode in modes)
        {
            var plot = new Plot();
            plot.Font.Set("DejaVu Sans");
            plots.Add(plot);
            foreach (var group in rows.Where(r => r.Mode == mode).GroupBy(r => (r.Impl, r.Dtype, r.Headdim, r.Causal))
                         .OrderBy(g => g.Key.Impl != "ours").ThenBy(g => colours.IndexOf((g.Key.Dtype, g.Key.Headdim, g.Key.Causal))))
            {
                var points = group.OrderBy(r => r.SeqlenQ).ToList();
                var line = plot.Add.Scatter(points.Select(r => Math.Log2(r.SeqlenQ)).ToArray(), points.Select(r => r.Gflops).ToArray());
                line.Color = palette.GetColor(colours.IndexOf((group.Key.Dtype, group.Key.Headdim, group.Key.Causal)));
                line.LineWidth = 2;
                line.MarkerSize = 7;
                line.LinePattern = group.Key.Impl == "naive" ? LinePattern.Dashed : LinePattern.Solid;
                line.MarkerShape = group.Key.Impl == "naive" ? MarkerShape.OpenCircle : MarkerShape.FilledCircle;
                line.LegendText = $"{group.Key.Impl} {group.Key.Dtype} d{group.Key.Headdim}{(group.Key.Causal ? " causal" : "")}";
            }
            if (peakGflops > 0)
            {
                var peak = plot.Add.HorizontalLine(peakGflops, 1.5f, Colors.Gray, LinePattern.Dotted);
                peak.LegendText = $"fp32 FMA peak ({peakGflops:0})";
            }

            var ticks = new ScottPlot.TickGenerators.NumericManual();
            foreach (int s in seqlens) ticks.AddMajor(Math.Log2(s), s.ToString(CultureInfo.InvariantCulture));
            plot.Axes.Bottom.TickGenerator = ticks;
            double pad = seqlens.Count > 1 ? 0.25 : 1;
            plot.Axes.SetLimits(Math.Log2(seqlens[0]) - pad, Math.Log2(seqlens[^1]) + pad, 0, yMax);
            plot.Title($"{(mode == "fwdbwd" ? "fwd + bwd" : mode)} | {title}", size: 13);
            plot.XLabel("sequence length", size: 13);
            plot.YLabel("GFLOP/s", size: 13);
            plot.HideLegend();
        }
        plots[^1].ShowLegend(Edge.Right);

        var multiplot = new Multiplot(plots[0]);
        foreach (var plot in plots.Skip(1)) multiplot.AddPlot(plot);
        multiplot.Layout = new ScottPlot.MultiplotLayouts.Columns();
        string? folder = Path.GetDirectoryName(Path.GetFullPath(path));
        if (folder is not null) Directory.CreateDirectory(folder);
        multiplot.SavePng(path, PanelWidth * modes.Count + LegendWidth, Height);
    }
}
