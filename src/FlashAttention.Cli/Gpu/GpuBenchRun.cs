using System.Globalization;
using System.Text.Json.Nodes;
using FlashAttn.Cli.Bench;
using FlashAttn.Cuda;
using Spectre.Console;

namespace FlashAttn.Cli.Gpu;

/// <summary>
/// `flash-attn bench` on a CUDA GPU: DESIGN.md's sweep timed with CUDA events for our FlashAttention-2 kernel and
/// the unfused baseline, then PyTorch SDPA's flash, cuDNN and math backends on the same shapes in the same
/// invocation; a table of TFLOP/s with ratios, the results JSON and a plot. Feature-overhead rows (<see cref="FeatureBench"/>)
/// and KV-cache decoding rows (<see cref="DecodeBench"/>) follow when asked for; <see cref="Settings.DecodeOnly"/> runs the
/// decoding rows alone.
/// </summary>
internal static class GpuBenchRun
{
    /// <param name="Decode">Also run the decoding rows (after the feature rows).</param>
    /// <param name="DecodeOnly">Run only the decoding rows and their peers: no sweep, seed shape, feature rows or plot.</param>
    /// <param name="DecodeSplits">KvCacheOptions.NumSplits of the decoding rows (0: automatic).</param>
    /// <param name="FeatureFilter">Only these features' rows (with their "none" baselines); null runs them all.</param>
    public sealed record Settings(IReadOnlyList<string> Dtypes, IReadOnlyList<int> HeadDims, IReadOnlyList<int> Seqlens, IReadOnlyList<bool> Causal,
        IReadOnlyList<string> Modes, string? OutputDirectory, string? PlotPath, string PeerScript, bool Unfused, bool SeedMemory, bool Features = false,
        bool Decode = false, bool DecodeOnly = false, int DecodeSplits = 0, IReadOnlyList<string>? FeatureFilter = null);

    public static int Execute(CudaDevice device, Settings settings, CancellationToken ct)
    {
        string run = ResultsFile.FormatRun(DateTime.UtcNow);
        var slug = DeviceSlug(device.Name);
        AnsiConsole.MarkupLine($"CUDA GPU: [bold]{Markup.Escape(device.Name)}[/] ({device.Architecture}, {device.MultiprocessorCount} SMs); results as {slug}");
        AnsiConsole.MarkupLine($"Forward kernel: [bold]{device.ForwardKernelFamily}[/] (dropout takes fa2; FLASHATTN_FWD_SM90=0 selects fa2 for all)");
        AnsiConsole.MarkupLine($"Backward kernel: [bold]{device.BackwardKernelFamily}[/] (dropout, head dims above 128 and narrow windows at 64 take fa2; " +
            "FLASHATTN_BWD_SM90=0 selects fa2 for all)");
        var cases = settings.DecodeOnly ? [] : GpuBenchCase.Sweep(settings.Dtypes, settings.HeadDims, settings.Seqlens, settings.Causal, settings.Modes).ToList();
        if (settings.SeedMemory && !settings.DecodeOnly) cases.Add(GpuBenchCase.Seed);
        var rows = new List<BenchRow>();
        var skipped = new List<string>();
        var stream = CudaStream.Legacy;
        var random = new Random(1234);
        if (cases.Count > 0)
        {
            AnsiConsole.Progress().AutoClear(false)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
                .Start(ctx =>
                {
                    var task = ctx.AddTask("GPU benchmark", maxValue: cases.Count);
                    foreach (var c in cases)
                    {
                        ct.ThrowIfCancellationRequested();
                        task.Description = c.Label;
                        try
                        {
                            rows.AddRange(c.Dtype == "fp16" ? Measure<Half>(c, device, stream, random, settings.Unfused, run) : Measure<BFloat16>(c, device, stream, random, settings.Unfused, run));
                        }
                        catch (NotSupportedException error)
                        {
                            skipped.Add($"{c.Label}: {error.Message}");
                        }
                        task.Increment(1);
                    }
                });
        }

        foreach (var note in skipped) AnsiConsole.MarkupLine($"[yellow]skipped:[/] {Markup.Escape(note)}");
        var featureRows = settings.Features && !settings.DecodeOnly ? FeatureBench.Run(device, stream, settings.Modes, run, ct, settings.FeatureFilter) : [];
        var decodeRows = settings.Decode || settings.DecodeOnly ? Decode(device, stream, settings, run, ct) : [];
        if (cases.Count > 0)
        {
            AnsiConsole.MarkupLine("Running the PyTorch peers on the same shapes...");
            var peers = TorchPeers.Run(settings.PeerScript, cases, run, TimeSpan.FromMinutes(8));
            if (peers.Note is not null) AnsiConsole.MarkupLine($"[yellow]note:[/] {Markup.Escape(peers.Note)}");
            rows.AddRange(peers.Rows.Select(PeerRow));
        }

        foreach (var mode in rows.Select(r => r.Mode).Distinct())
            AnsiConsole.Write(Table(rows.Where(r => r.Mode == mode && !IsSeed(r)).ToList(), mode));
        if (settings.SeedMemory && !settings.DecodeOnly) AnsiConsole.Write(MemoryTable(rows.Where(IsSeed).ToList()));
        List<BenchRow> measured = [.. rows, .. featureRows, .. decodeRows];
        if (settings.OutputDirectory is { } directory && measured.Count > 0)
        {
            var saved = ResultsFile.Save(directory, slug, measured);
            AnsiConsole.MarkupLine($"Results: {Markup.Escape(saved.Path)}");
        }
        string? plot = settings.PlotPath ?? (settings.OutputDirectory is { } d ? Path.Combine(d, slug + ".png") : null);
        if (plot is not null && rows.Count > 0)
        {
            Plotter.Save(rows, plot, $"{device.Name}, 16k tokens", 0, unit: Plotter.Unit.Tflops);
            AnsiConsole.MarkupLine($"Plot: {Markup.Escape(plot)}");
        }
        return 0;
    }

    /// <summary>The decode rows; after a sweep, a CUDA failure there is reported and the sweep's rows are still saved.</summary>
    private static List<BenchRow> Decode(CudaDevice device, CudaStream stream, Settings settings, string run, CancellationToken ct)
    {
        try
        {
            return DecodeBench.Run(device, stream, DecodeBench.PeerScriptBeside(settings.PeerScript), run, settings.DecodeSplits, ct);
        }
        catch (CudaException error) when (!settings.DecodeOnly)
        {
            AnsiConsole.MarkupLine($"[red]decode rows failed:[/] {Markup.Escape(error.Message)}");
            return [];
        }
    }

    private static List<BenchRow> Measure<T>(GpuBenchCase c, CudaDevice device, CudaStream stream, Random random, bool unfused, string run)
        where T : unmanaged
    {
        var rows = new List<BenchRow>();
        using var work = new GpuWorkloads<T>(c, device, random);
        var (ms, runs) = GpuTimer.Median(work.Ours(stream), stream);
        rows.Add(Row("ours", c, ms, runs, device.Name, run, c.Mode == "fwd" ? 0 : work.OursWorkspaceMib(stream)));
        if (unfused && c.Mode != "bwd")
        {
            long workspace = 0;
            try
            {
                var (unfusedMs, unfusedRuns) = GpuTimer.Median(work.Unfused(device, stream, bytes => workspace = bytes), stream);
                rows.Add(Row("unfused", c, unfusedMs, unfusedRuns, device.Name, run, workspace / (1024.0 * 1024.0)));
            }
            catch (CudaOutOfMemoryException)
            {
                // The materialised score matrix does not fit at this length: exactly the point of the comparison.
            }
        }
        return rows;
    }

    private static bool IsSeed(BenchRow r) => r.Dtype == "fp16" && r.Batch == 4 && r.SeqlenQ == 4096 && r.Heads == 32 && r.Mode == "fwdbwd";

    /// <summary>The article's memory figure: device memory beyond inputs and outputs for forward+backward at the seed shape.</summary>
    private static Table MemoryTable(IReadOnlyList<BenchRow> rows)
    {
        var table = new Table().Title("seed shape (b4 s4096 h32 d128 fp16 causal) forward+backward: workspace beyond q, k, v, dO, O, dQ, dK, dV")
            .AddColumns("impl").AddColumn(new TableColumn("workspace MiB").RightAligned()).AddColumn(new TableColumn("ms").RightAligned());
        foreach (var r in rows.OrderBy(r => r.Impl))
            table.AddRow(r.Impl, (r.WorkspaceMib ?? double.NaN).ToString("0", CultureInfo.InvariantCulture), r.Ms.ToString("0.00", CultureInfo.InvariantCulture));
        return table;
    }

    private static BenchRow Row(string impl, GpuBenchCase c, double ms, int runs, string device, string run, double workspaceMib) => new()
    {
        Impl = impl, Mode = c.Mode, Dtype = c.Dtype, Batch = c.Batch, SeqlenQ = c.Seqlen, SeqlenK = c.Seqlen, Heads = c.Heads, HeadsKv = c.Heads,
        Headdim = c.HeadDim, Causal = c.Causal, Ms = Math.Round(ms, 4), Tflops = Math.Round(c.Flops / ms / 1e9, 1), Device = device, Run = run,
        Gflops = Math.Round(c.Flops / ms / 1e6, 0), FmaPeakGflops = 0, Runs = runs, Vector = "cuda", WorkspaceMib = Math.Round(workspaceMib, 1),
    };

    private static BenchRow PeerRow(JsonObject r)
    {
        double Number(string key) => r[key]?.GetValue<double>() ?? double.NaN;
        return new BenchRow
        {
            Impl = r["impl"]!.GetValue<string>(), Mode = r["mode"]!.GetValue<string>(), Dtype = r["dtype"]!.GetValue<string>(),
            Batch = (int)Number("batch"), SeqlenQ = (int)Number("seqlen_q"), SeqlenK = (int)Number("seqlen_k"), Heads = (int)Number("heads"),
            HeadsKv = (int)Number("heads_kv"), Headdim = (int)Number("headdim"), Causal = r["causal"]!.GetValue<bool>(),
            Ms = Math.Round(Number("ms"), 4), Tflops = Math.Round(Number("tflops"), 1), Device = r["device"]!.GetValue<string>(), Run = r["run"]!.GetValue<string>(),
            Gflops = Math.Round(Number("tflops") * 1000, 0), FmaPeakGflops = 0, Runs = 20, Vector = "torch", WorkspaceMib = Math.Round(Number("workspace_mib"), 1),
        };
    }

    /// <summary>One line per shape: TFLOP/s of each impl and our ratio to each peer.</summary>
    private static Table Table(IReadOnlyList<BenchRow> rows, string mode)
    {
        string[] impls = ["ours", "unfused", "torch-flash", "torch-cudnn", "torch-math"];
        var table = new Table().Title($"{mode} TFLOP/s (ratios: ours / peer)").AddColumns("dtype", "d", "seqlen", "causal");
        foreach (var impl in impls) table.AddColumn(new TableColumn(impl).RightAligned());
        table.AddColumn(new TableColumn("vs flash").RightAligned()).AddColumn(new TableColumn("vs cuDNN").RightAligned()).AddColumn(new TableColumn("vs unfused").RightAligned());
        foreach (var shape in rows.GroupBy(r => (r.Dtype, r.Headdim, r.SeqlenQ, r.Causal)).OrderBy(g => g.Key.Dtype).ThenBy(g => g.Key.Headdim).ThenBy(g => g.Key.Causal).ThenBy(g => g.Key.SeqlenQ))
        {
            double Of(string impl) => shape.FirstOrDefault(r => r.Impl == impl)?.Tflops ?? double.NaN;
            string Ratio(string peer) => double.IsNaN(Of(peer)) ? "-" : (Of("ours") / Of(peer)).ToString("0.00x", CultureInfo.InvariantCulture);
            var cells = new List<string> { shape.Key.Dtype, shape.Key.Headdim.ToString(CultureInfo.InvariantCulture), shape.Key.SeqlenQ.ToString(CultureInfo.InvariantCulture), shape.Key.Causal ? "yes" : "no" };
            cells.AddRange(impls.Select(i => double.IsNaN(Of(i)) ? "-" : Of(i).ToString("0", CultureInfo.InvariantCulture)));
            cells.AddRange([Ratio("torch-flash"), Ratio("torch-cudnn"), Ratio("unfused")]);
            table.AddRow(cells.ToArray());
        }
        return table;
    }

    /// <summary>Results file name for a GPU: the model ("h100", "h200", "a100"...) or the sanitised name.</summary>
    public static string DeviceSlug(string name)
    {
        var model = System.Text.RegularExpressions.Regex.Match(name, @"\b([A-Z]{1,2}\d{2,4})\b");
        return model.Success ? model.Value.ToLowerInvariant() : string.Concat(name.ToLowerInvariant().Select(ch => char.IsLetterOrDigit(ch) ? ch : '-')).Trim('-');
    }
}
