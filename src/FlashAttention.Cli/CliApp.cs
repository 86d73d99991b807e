using System.CommandLine;
using FlashAttn.Cli.Commands;
using Spectre.Console;

namespace FlashAttn.Cli;

/// <summary>The `flash-attn` command tree.</summary>
internal static class CliApp
{
    /// <summary>Width of tables when output goes to a file or CI log (no terminal to measure).</summary>
    private const int RedirectedWidth = 160;

    public static RootCommand Build()
    {
        if (Console.IsOutputRedirected) AnsiConsole.Profile.Width = RedirectedWidth;
        var root = new RootCommand("flash-attn: checks, benchmarks and the training experiment for FlashAttention.NET")
        {
            CheckCommand.Create(),
            BenchCommand.Create(),
            PlotCommand.Create(),
            WarmupCommand.Create(),
            TrainCommand.Create(),
        };
        root.Subcommands.Add(AllCommand.Create(Build));
        return root;
    }
}
