using Spectre.Console;

namespace FlashAttn.Cli.Bench;

/// <summary>
/// One `flash-attn bench` invocation: measure the FMA peak, time every row (ours, then naive where the seqlen allows)
/// under a progress display, then PyTorch's CPU attention on the same cases when asked for (<see cref="CpuPeer"/>), print
/// the table, then write the results JSON and the plot. Nothing is written when the run is cancelled, so the results file
/// only ever holds complete runs.
/// </summary>
internal static class BenchRun
{
    /// <summary>Share of the CPU used by other processes before the run above which a warning is printed.</summary>
    private const double MaxBusy = 0.2;

    /// <summary>Share of the CPU that other processes may take while a row is measured before it is measured again.</summary>
    private const double MaxOtherCpu = 0.05;

    /// <summary>Measurements of one row at most (see <see cref="MeasureQuietly"/>).</summary>
    private const int MaxAttempts = 4;

    /// <summary>Relative change of the FMA peak between the start and the end of the run above which a warning is printed.</summary>
    private const double MaxPeakDrift = 0.1;

    public static int Execute(BenchSettings settings, CancellationToken ct)
    {
        var runStart = DateTime.UtcNow;
        string run = ResultsFile.FormatRun(runStart);
        // Always the CPU path: a GPU machine reaches this run only through --cpu (the GPU bench is GpuBenchRun), and
        // picking the CUDA path here would time host-device copies and refuse fp32. With --cpu, CUDA is not even probed.
        IExecutionPath path = new CpuPath();
        AnsiConsole.MarkupLine(settings.CpuRequested ? $"Running the CPU path ({Markup.Escape(path.Description)}), as asked"
            : $"No CUDA GPU: running the CPU path ({Markup.Escape(path.Description)})");
        var device = DeviceInfo.Cpu();
        if (Contention.Sample(TimeSpan.FromMilliseconds(300)) is var busy && busy > MaxBusy)
            AnsiConsole.MarkupLine($"[yellow]warning:[/] other processes are using {busy:P0} of the CPU; timings will be noisy.");
        string vector = Cpu.TileGemm.WidthName;

        var peakTrial = TimeSpan.FromSeconds(settings.Quick ? 0.1 : 0.4);
        var peak = FmaPeak.Measure(peakTrial);
        AnsiConsole.MarkupLine($"fp32 FMA peak: [bold]{peak.Gflops:0.0} GFLOP/s[/] ({peak.Width}, 12 accumulators, {peak.Threads} threads); device {Markup.Escape(device.Slug)}");

        var cases = settings.Cases().ToList();
        var work = cases.SelectMany(c => c.Seqlen <= settings.NaiveMaxSeqlen ? new[] { ("ours", c), ("naive", c) } : [("ours", c)]).ToList();
        var rows = new List<BenchRow>();
        AnsiConsole.Progress()
            .AutoClear(false)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new SpinnerColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("benchmark", maxValue: work.Sum(w => Weight(w.Item1, w.Item2)));
                foreach (var (impl, c) in work)
                {
                    ct.ThrowIfCancellationRequested();
                    task.Description = $"{impl} {c.Label}";
                    var action = impl == "ours" ? Workloads.Ours(path, c, ct) : Workloads.Naive(c, ct);
                    var row = MeasureQuietly(action, settings.Repeats, ct, (ms, runs, others) =>
                        BenchRow.From(impl, c, ms, runs, device, run, peak.Gflops, vector) with { OtherCpu = Math.Round(others, 3) });
                    rows.Add(row);
                    task.Increment(Weight(impl, c));
                    GC.Collect();
                }
                task.Description = "done";
            });
        // After ours, never beside it: the peer wants every core too. Before the second peak, so the drift covers it.
        if (settings.TorchPeerScript is { } peerScript)
            rows.AddRange(CpuPeer.Run(peerScript, cases, settings.Repeats, device, run, peak.Gflops));

        // Shared or throttled machines change speed; a second measurement shows whether this run is trustworthy.
        var peakAfter = FmaPeak.Measure(peakTrial);
        double drift = Math.Abs(peakAfter.Gflops - peak.Gflops) / Math.Max(peak.Gflops, peakAfter.Gflops);
        AnsiConsole.MarkupLine($"fp32 FMA peak after the run: {peakAfter.Gflops:0.0} GFLOP/s" +
            (drift > MaxPeakDrift ? $" [yellow]({drift:P0} off the first measurement: the machine's speed changed during the run, so expect noisy rows)[/]" : ""));

        AnsiConsole.Write(BenchTable.Build(rows));
        int disturbed = rows.Count(r => r.OtherCpu > MaxOtherCpu);
        if (disturbed > 0)
            AnsiConsole.MarkupLine($"[yellow]warning:[/] {disturbed} of {rows.Count} rows were measured while other processes used over {MaxOtherCpu:P0} of the CPU " +
                $"(after {MaxAttempts} attempts each; see other_cpu in the results).");
        if (settings.OutputDirectory is { } directory)
        {
            var saved = ResultsFile.Save(directory, device.Slug, rows);
            AnsiConsole.MarkupLine($"Results: {Markup.Escape(saved.Path)}" + (saved.HistoryPath is { } h ? $" (previous file moved to {Markup.Escape(h)})" : ""));
        }
        string? plotPath = settings.PlotPath ?? (settings.OutputDirectory is { } d ? Path.Combine(d, device.Slug + ".png") : null);
        if (plotPath is not null)
        {
            Plotter.Save(rows, plotPath, $"{device.Name}, {vector}, b{settings.Batch} h{settings.Heads}", peak.Gflops);
            AnsiConsole.MarkupLine($"Plot: {Markup.Escape(plotPath)}");
        }
        return 0;
    }

    /// <summary>
    /// Measures a row, again (up to <see cref="MaxAttempts"/> times) while other processes took more than
    /// <see cref="MaxOtherCpu"/> of the CPU during it; keeps the least disturbed attempt.
    /// </summary>
    private static BenchRow MeasureQuietly(Action action, int repeats, CancellationToken ct, Func<double, int, double, BenchRow> row)
    {
        BenchRow? best = null;
        for (int attempt = 0; attempt < MaxAttempts; attempt++)
        {
            var contention = Contention.Start();
            var (ms, runs) = BenchTimer.Measure(action, repeats, ct);
            var candidate = row(ms, runs, contention.OthersSince());
            if (best is null || candidate.OtherCpu < best.OtherCpu) best = candidate;
            if (best.OtherCpu <= MaxOtherCpu) break;
        }
        return best!;
    }

    /// <summary>Progress weight: the expected time, roughly FLOPs (naive is slower and never skips masked work).</summary>
    private static double Weight(string impl, BenchCase c) => c.Flops * (impl == "naive" ? (c.Causal ? 8 : 4) : 1) / 1e9;
}
