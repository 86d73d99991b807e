using System.Globalization;
using FlashAttn.Cli.Bench;
using FlashAttn.Cuda;
using Spectre.Console;

namespace FlashAttn.Cli.Gpu;

/// <summary>
/// The feature-overhead part of `flash-attn bench` on a GPU (issue: each flash-attn feature within 10% of the same shape
/// without it, softcap at head dim 64 within 25%; windows counted on the work they do; varlen within 10% of a fixed batch of
/// the same tokens). Rows carry DESIGN.md's "feature" key and are saved with the sweep.
/// </summary>
internal static class FeatureBench
{
    public static List<BenchRow> Run(CudaDevice device, CudaStream stream, IReadOnlyList<string> modes, string run, CancellationToken ct,
        IReadOnlyList<string>? only = null)
    {
        var cases = FeatureCase.Standard(modes).Where(c => only is null || c.Feature == "none" || only.Contains(c.Feature)).ToList();
        var rows = new List<BenchRow>();
        var random = new Random(4321);
        AnsiConsole.Progress().AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("feature overheads", maxValue: cases.Count);
                foreach (var c in cases)
                {
                    ct.ThrowIfCancellationRequested();
                    task.Description = c.Label;
                    rows.Add(c.Dtype == "fp16" ? Measure<Half>(c, device, stream, random, run) : Measure<BFloat16>(c, device, stream, random, run));
                    task.Increment(1);
                }
            });
        AnsiConsole.Write(Table(rows));
        return rows;
    }

    private static BenchRow Measure<T>(FeatureCase c, CudaDevice device, CudaStream stream, Random random, string run) where T : unmanaged
    {
        using var work = new FeatureWorkload<T>(c, device, random);
        var (ms, runs) = GpuTimer.Median(work.Launch(stream, c.Options(random)), stream);
        double tflops = c.Flops / ms / 1e9;
        double? onTiles = c.TileFlops(device.Architecture) is { } tileFlops ? Math.Round(tileFlops / ms / 1e9, 1) : null;
        return new BenchRow
        {
            Impl = "ours", Mode = c.Mode, Dtype = c.Dtype, Batch = c.Lengths?.Length ?? c.Batch, SeqlenQ = c.Seqlen, SeqlenK = c.Seqlen,
            Heads = c.Heads, HeadsKv = c.HeadsKv, Headdim = c.HeadDim, Causal = c.Causal, Ms = Math.Round(ms, 4), Tflops = Math.Round(tflops, 1),
            Device = device.Name, Run = run, Gflops = Math.Round(tflops * 1000, 0), FmaPeakGflops = 0, Runs = runs, Vector = "cuda",
            Feature = FeatureKey(c), TflopsOnTiles = onTiles,
        };
    }

    /// <summary>"window(L,R)" carries the window; "varlen" rows keep the longest length as seqlen and the sequence count as batch.</summary>
    private static string FeatureKey(FeatureCase c) => c.Feature == "window" ? $"window({c.Window.Left},{c.Window.Right})" : c.Feature;

    /// <summary>The baseline a feature row is judged against: "none" at the same mode, head dim and causal setting, and at the same
    /// batch and length, except varlen (the b8 s2048 batch of the same tokens) and windows (full attention on the same sequence).</summary>
    private static BenchRow? Baseline(IReadOnlyList<BenchRow> rows, BenchRow r)
    {
        var none = rows.Where(x => x.Feature == "none" && x.Mode == r.Mode && x.Headdim == r.Headdim && x.Causal == r.Causal);
        return r.Feature == "varlen" ? none.FirstOrDefault(x => x.Batch == 8) : none.FirstOrDefault(x => x.Batch == r.Batch && x.SeqlenQ == r.SeqlenQ);
    }

    /// <summary>The limit: 25% for softcap at head dim 64 (tanh costs as much as the matrix work there), 10% otherwise.</summary>
    public static double Limit(BenchRow r) => r.Feature == "softcap" && r.Headdim <= 64 ? 0.25 : 0.10;

    /// <summary>The overhead the limit applies to: per visible pair, except windows, counted on the tiles both rows'
    /// kernels compute (the work a window does).</summary>
    public static double Overhead(BenchRow r, BenchRow? baseline) =>
        baseline is null ? double.NaN
        : r.Feature!.StartsWith("window", StringComparison.Ordinal) && r.TflopsOnTiles is { } tiles && baseline.TflopsOnTiles is { } baseTiles
            ? baseTiles / tiles - 1
            : baseline.Tflops / r.Tflops - 1;

    private static Table Table(IReadOnlyList<BenchRow> rows)
    {
        var table = new Table().Title("feature overhead (bf16, 16k tokens, hidden 2048): time per unit of work against the same shape without the feature; " +
                "windows judged on computed tiles")
            .AddColumns("mode", "d", "causal", "feature").AddColumn(new TableColumn("ms").RightAligned()).AddColumn(new TableColumn("TFLOP/s").RightAligned())
            .AddColumn(new TableColumn("on tiles").RightAligned())
            .AddColumn(new TableColumn("baseline").RightAligned()).AddColumn(new TableColumn("overhead").RightAligned()).AddColumn(new TableColumn("limit").RightAligned());
        foreach (var r in rows.Where(r => r.Feature != "none"))
        {
            var baseline = Baseline(rows, r);
            double overhead = Overhead(r, baseline);
            string verdict = double.IsNaN(overhead) ? "-" : overhead <= Limit(r) ? $"[green]{overhead:+0.0%;-0.0%}[/]" : $"[red]{overhead:+0.0%;-0.0%}[/]";
            table.AddRow(r.Mode, r.Headdim.ToString(CultureInfo.InvariantCulture), r.Causal ? "yes" : "no", Markup.Escape(r.Feature!),
                r.Ms.ToString("0.000", CultureInfo.InvariantCulture), r.Tflops.ToString("0", CultureInfo.InvariantCulture),
                r.TflopsOnTiles?.ToString("0", CultureInfo.InvariantCulture) ?? "-",
                baseline?.Tflops.ToString("0", CultureInfo.InvariantCulture) ?? "-", verdict, Limit(r).ToString("0%", CultureInfo.InvariantCulture));
        }
        return table;
    }
}
