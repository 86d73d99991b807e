using FlashAttn.Cli.Bench;
using Spectre.Console;

namespace FlashAttn.Cli.Gpu;

/// <summary>The decode console table: one line per (batch, cache length) with our latency and bandwidth, the paged cache's
/// latency, PyTorch SDPA's default and forced backends, our speed against the default, and issue 6's targets with the verdict.</summary>
internal static class DecodeTable
{
    /// <summary>The peer the targets name: SDPA with PyTorch's own backend choice, what a PyTorch user gets.</summary>
    public const string Peer = "torch-sdpa";

    public static Table Build(IReadOnlyList<BenchRow> rows, double copyTbps)
    {
        var decode = rows.Where(r => r.Op == DecodeRows.Op).ToList();
        double? peerCopy = decode.FirstOrDefault(r => r.Impl == Peer && r.CopyTbps is > 0)?.CopyTbps;
        string title = $"decode (bf16, h32/kv8, d128): µs per call, back to back over caches rotated past L2; copy {copyTbps:0.00} TB/s"
            + (peerCopy is { } pc ? $" (torch's run {pc:0.00})" : "");
        var table = new Table().Title(Markup.Escape(title)).AddColumns("batch", "cache");
        foreach (var column in new[] { "ours µs", "TB/s", "% copy", "head-major µs", "paged µs", "torch µs", "TB/s", "% copy", "flash µs", "cuDNN µs", "ours/torch", "≥ torch", "≥ copy" })
            table.AddColumn(new TableColumn(column).RightAligned());
        table.AddColumn("verdict");
        table.Caption("torch: SDPA's default backend; % copy: K+V bytes per call / latency over the copy bandwidth of the same run; "
            + "targets: ≥0.98x torch, ≥1.30x where torch is under 80% of copy, ≥80% of copy from 128 MiB per call");

        foreach (var shape in decode.Select(r => (r.Batch, r.SeqlenK)).Distinct().OrderBy(s => s.Batch).ThenBy(s => s.SeqlenK))
        {
            BenchRow? Of(string impl, string? feature = null) =>
                decode.FirstOrDefault(r => r.Impl == impl && r.Feature == feature && r.Batch == shape.Batch && r.SeqlenK == shape.SeqlenK);
            BenchRow? ours = Of("ours"), headMajor = Of("ours", DecodeCase.HeadMajorFeature), paged = Of("ours", DecodeCase.PagedFeature), torch = Of(Peer);
            // PyTorch's share against the copy figure of its own process, when it reported one.
            double? torchShare = torch?.KvTbps / (torch?.CopyTbps ?? copyTbps);
            var targets = ours is null ? [] : DecodeTargets.Judge(new DecodeCase(shape.Batch, shape.SeqlenK).KvBytes, ours.Ms, copyTbps, torch?.Ms, torchShare);
            var speed = targets.FirstOrDefault(t => t.Name == "torch");
            var copy = targets.FirstOrDefault(t => t.Name == "copy");
            table.AddRow(
                $"{shape.Batch}", $"{shape.SeqlenK}",
                Micro(ours), Tbps(ours), Percent(ours?.KvTbps / copyTbps),
                Micro(headMajor), Micro(paged), Micro(torch), Tbps(torch), Percent(torchShare),
                Micro(Of("torch-flash")), Micro(Of("torch-cudnn")),
                ours is not null && torch is not null ? $"{torch.Ms / ours.Ms:0.00}x" : "-",
                speed is null ? "-" : $"{speed.Required:0.00}x", copy is null ? "-" : $"{copy.Required:0%}",
                Verdict(targets));
        }
        return table;
    }

    private static string Verdict(IReadOnlyList<DecodeTargets.Target> targets) =>
        targets.Count == 0 ? "-"
        : targets.All(t => t.Pass) ? "[green]pass[/]"
        : $"[red]FAIL {string.Join("+", targets.Where(t => !t.Pass).Select(t => t.Name))}[/]";

    private static string Micro(BenchRow? r) => r is null || !double.IsFinite(r.Ms) ? "-" : $"{r.Ms * 1000:0.0}";

    private static string Tbps(BenchRow? r) => r?.KvTbps is { } t ? $"{t:0.00}" : "-";

    private static string Percent(double? share) => share is { } s && double.IsFinite(s) ? $"{s:0%}" : "-";
}
