using Spectre.Console;

namespace FlashAttn.Cli.Bench;

/// <summary>The end-of-run table: one line per row, with the fraction of the FMA peak and the speed-up over naive; with
/// torch-cpu rows, ours, torch-cpu and naive of a shape stand together and ours' line gains its speed over torch-cpu.</summary>
internal static class BenchTable
{
    private static readonly string[] ImplOrder = ["ours", CpuPeerRows.Impl, "naive"];

    public static Table Build(IReadOnlyList<BenchRow> rows)
    {
        var naive = rows.Where(r => r.Impl == "naive").ToDictionary(r => r.Shape);
        var versusTorch = CpuPeerRows.OursOverTorch(rows);
        bool withTorch = rows.Any(r => r.Impl == CpuPeerRows.Impl);
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumns("impl", "mode", "dtype")
            .AddColumn(new TableColumn("seqlen").RightAligned())
            .AddColumn(new TableColumn("headdim").RightAligned())
            .AddColumn("causal")
            .AddColumn(new TableColumn("ms").RightAligned())
            .AddColumn(new TableColumn("GFLOP/s").RightAligned())
            .AddColumn(new TableColumn("% of peak").RightAligned())
            .AddColumn(new TableColumn("vs naive").RightAligned());
        if (withTorch) table.AddColumn(new TableColumn("ours / torch").RightAligned());
        foreach (var r in rows.OrderBy(r => r.Dtype).ThenBy(r => r.Mode).ThenBy(r => r.Headdim).ThenBy(r => r.Causal).ThenBy(r => r.SeqlenQ).ThenBy(Rank))
        {
            string ratio = r.Impl != "naive" && naive.TryGetValue(r.Shape, out var n) ? $"{n.Ms / r.Ms:0.0}x" : "";
            List<string> cells = [r.Impl, r.Mode, r.Dtype, $"{r.SeqlenQ}", $"{r.Headdim}", r.Causal ? "yes" : "no",
                Format(r.Ms), $"{r.Gflops:0.0}", $"{r.PercentOfPeak:0.0}%", ratio];
            if (withTorch) cells.Add(r.Impl == "ours" && versusTorch.TryGetValue(r.Shape, out double x) ? $"{x:0.00}x" : "");
            table.AddRow(cells.ToArray());
        }
        return table;
    }

    public static string Format(double ms) => ms >= 100 ? $"{ms:0}" : ms >= 10 ? $"{ms:0.0}" : $"{ms:0.00}";

    /// <summary>Ours first, then its peers; impls this table does not know last, by name.</summary>
    private static string Rank(BenchRow r) => Array.IndexOf(ImplOrder, r.Impl) is >= 0 and var i ? $"{i}" : $"9{r.Impl}";
}
