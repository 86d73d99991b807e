using Spectre.Console;

namespace FlashAttn.Cli.Bench;

/// <summary>The end-of-run table: one line per row, with the fraction of the FMA peak and the speed-up over naive.</summary>
internal static class BenchTable
{
    public static Table Build(IReadOnlyList<BenchRow> rows)
    {
        var naive = rows.Where(r => r.Impl == "naive").ToDictionary(r => r.Shape);
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumns("impl", "mode", "dtype")
            .AddColumn(new TableColumn("seqlen").RightAligned())
            .AddColumn(new TableColumn("headdim").RightAligned())
            .AddColumn("causal")
            .AddColumn(new TableColumn("ms").RightAligned())
            .AddColumn(new TableColumn("GFLOP/s").RightAligned())
            .AddColumn(new TableColumn("% of peak").RightAligned())
            .AddColumn(new TableColumn("vs naive").RightAligned());
        foreach (var r in rows.OrderBy(r => r.Dtype).ThenBy(r => r.Mode).ThenBy(r => r.Headdim).ThenBy(r => r.Causal).ThenBy(r => r.SeqlenQ).ThenByDescending(r => r.Impl))
        {
            string ratio = r.Impl != "naive" && naive.TryGetValue(r.Shape, out var n) ? $"{n.Ms / r.Ms:0.0}x" : "";
            table.AddRow(r.Impl, r.Mode, r.Dtype, $"{r.SeqlenQ}", $"{r.Headdim}", r.Causal ? "yes" : "no",
                Format(r.Ms), $"{r.Gflops:0.0}", $"{r.PercentOfPeak:0.0}%", ratio);
        }
        return table;
    }

    public static string Format(double ms) => ms >= 100 ? $"{ms:0}" : ms >= 10 ? $"{ms:0.0}" : $"{ms:0.00}";
}
