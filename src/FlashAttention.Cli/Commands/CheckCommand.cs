using System.CommandLine;
using FlashAttn.Cli.Check;
using Spectre.Console;

namespace FlashAttn.Cli.Commands;

/// <summary>`flash-attn check`: every feature at every element type, forward and backward, on every available
/// execution path, against a float64 oracle. Exit code 1 when anything fails.</summary>
internal static class CheckCommand
{
    public static Command Create()
    {
        var seed = new Option<int?>("--seed") { Description = "Seed of the random inputs (default: a fresh one, printed so a failure can be replayed)." };
        var dtype = new Option<string[]>("--dtype")
        {
            Description = "Element types to check: fp32, fp16, bf16 (default: all).",
            AllowMultipleArgumentsPerToken = true,
        };
        dtype.AcceptOnlyFromAmong(ElementTypes.Names);
        // The sanitizer run (scripts/sanitize.sh) narrows to cuda: the CPU path's time would only slow it down.
        var path = new Option<string[]>("--path")
        {
            Description = "Execution paths to check: cpu, cuda (default: every available one).",
            AllowMultipleArgumentsPerToken = true,
        };
        path.AcceptOnlyFromAmong("cpu", "cuda");
        var command = new Command("check", "Self-check every available execution path against a float64 reference.") { seed, dtype, path };
        command.SetGuardedAction((parseResult, ct) =>
        {
            int actualSeed = parseResult.GetValue(seed) ?? Random.Shared.Next();
            var types = parseResult.GetValue(dtype) is { Length: > 0 } names ? names.Select(ElementTypes.Parse).ToHashSet() : null;
            var paths = parseResult.GetValue(path) is { Length: > 0 } pathNames ? pathNames.ToHashSet() : null;
            return Run(actualSeed, types, paths, ct);
        });
        return command;
    }

    private static int Run(int seed, HashSet<ElementType>? types, HashSet<string>? pathNames, CancellationToken ct)
    {
        foreach (var (name, reason) in ExecutionPaths.Unavailable)
            AnsiConsole.MarkupLine($"[yellow]note:[/] {Markup.Escape(reason)}; skipping the '{name}' path.");
        var paths = ExecutionPaths.Available.Where(p => pathNames is null || pathNames.Contains(p.Name)).ToList();
        if (paths.Count == 0)
        {
            AnsiConsole.MarkupLine($"[red]None of the requested paths ({Markup.Escape(string.Join(", ", pathNames!))}) is available here.[/]");
            return GuardedAction.Failure;
        }
        foreach (var path in paths)
            AnsiConsole.MarkupLine($"Checking the [bold]{path.Name}[/] path ({Markup.Escape(path.Description)}), seed {seed}.");

        var rng = new Random(seed);
        var results = new List<CheckResult>();
        var gaps = new List<string>();
        // Attention cases (forward and backward), then the KV-cache cases, on every path that runs their element type.
        void RunAll(IEnumerable<CheckCase> all, Func<IExecutionPath, CheckCase, IEnumerable<CheckResult>> run)
        {
            var selected = all.Where(c => types is null || types.Contains(c.DType)).ToList();
            foreach (var path in paths)
                foreach (var c in selected)
                {
                    ct.ThrowIfCancellationRequested();
                    if (path.ForwardGap(c.DType, c.Options) is { } gap)
                        gaps.Add($"{path.Name}: {c.DType.Name()} {c.Feature} ({gap})");
                    else
                        results.AddRange(run(path, c));
                }
        }
        RunAll(CheckCases.All(rng), (path, c) => CheckRunner.Run(path, c, rng, ct));
        RunAll(KvCacheCheckRunner.Cases(), (path, c) => [KvCacheCheckRunner.Run(path, c, rng, ct)]);
        if (gaps.Count > 0)
            AnsiConsole.MarkupLine($"[yellow]note:[/] not covered by a path, so not checked there: {Markup.Escape(string.Join("; ", gaps))}.");

        AnsiConsole.Write(Table(results));
        int failed = results.Count(r => !r.Passed);
        AnsiConsole.MarkupLine(failed == 0
            ? $"[green]All {results.Count} checks passed.[/]"
            : $"[red]{failed} of {results.Count} checks failed[/] (seed {seed}; rerun with --seed {seed}).");
        foreach (var r in results.Where(r => !r.Passed && r.Error is null))
            foreach (var t in r.Tensors.Where(t => !t.Passed))
                AnsiConsole.MarkupLine($"  {r.Case.DType.Name()} {Markup.Escape(r.Case.Feature)} {r.Direction} {t.Tensor}: max error {t.MaxError:G3} at flat index {t.WorstIndex}, " +
                    $"mean error {t.MeanError:G3}, tolerance {t.Tolerance:G3} (naive error {t.NaiveError:G3}, max |ref| {t.MaxReference:G3})");
        return failed == 0 ? 0 : GuardedAction.Failure;
    }

    private static Table Table(IEnumerable<CheckResult> results)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumns("Type", "Case", "Shape", "Dir", "Path", "Worst")
            .AddColumn(new TableColumn("Max error").RightAligned())
            .AddColumn(new TableColumn("Tolerance").RightAligned())
            .AddColumn("Result");
        foreach (var r in results)
        {
            var worst = r.Worst;
            table.AddRow(
                r.Case.DType.Name(), Markup.Escape(r.Case.Feature), r.Case.ShapeText, r.Direction, r.Path,
                worst?.Tensor ?? "-",
                worst is null ? "-" : $"{worst.MaxError:0.00e+00}",
                worst is null ? "-" : $"{worst.Tolerance:0.00e+00}",
                r.Passed ? "[green]PASS[/]" : r.Error is null ? "[red]FAIL[/]" : $"[red]FAIL[/] {Markup.Escape(r.Error)}");
        }
        return table;
    }
}
