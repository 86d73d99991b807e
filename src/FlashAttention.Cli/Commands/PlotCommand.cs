using System.CommandLine;
using FlashAttn.Cli.Bench;
using Spectre.Console;

namespace FlashAttn.Cli.Commands;

/// <summary>`flash-attn plot`: redraws the PNG of a results file without rerunning the benchmark.</summary>
internal static class PlotCommand
{
    public static Command Create()
    {
        var results = new Option<string?>("--results") { Description = "Results JSON (default bench/results/<this machine>.json)." };
        var output = new Option<string?>("--plot") { Description = "PNG path (default: the results path with .png)." };
        var command = new Command("plot", "Draw GFLOP/s against seqlen from a results JSON file.") { results, output };
        command.SetGuardedAction((parseResult, _) =>
        {
            var device = DeviceInfo.Cpu();
            string path = parseResult.GetValue(results) ?? Path.Combine("bench", "results", device.Slug + ".json");
            string png = parseResult.GetValue(output) ?? Path.ChangeExtension(path, ".png");
            var rows = ResultsFile.Load(path);
            string title = rows.Select(r => r.Device).FirstOrDefault(d => d.Length > 0) ?? Path.GetFileNameWithoutExtension(path);
            double peak = rows.Select(r => r.FmaPeakGflops).DefaultIfEmpty(0).Max();
            bool gpu = rows.Any(r => r.Impl is "unfused" || r.Impl.StartsWith("torch-", StringComparison.Ordinal));
            Plotter.Save(rows, png, title, peak, gpu ? Plotter.Unit.Tflops : Plotter.Unit.Gflops);
            AnsiConsole.MarkupLine($"Plot: {Markup.Escape(png)} ({rows.Count} rows)");
            return 0;
        });
        return command;
    }
}
