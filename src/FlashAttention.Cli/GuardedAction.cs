using System.CommandLine;
using Spectre.Console;

namespace FlashAttn.Cli;

/// <summary>
/// Runs a command's work off the parsing thread and turns exceptions into an exit code and a one-line message:
/// users see what went wrong, not a stack trace (set FLASH_ATTN_DEBUG=1 to get the trace).
/// </summary>
internal static class GuardedAction
{
    public const int Failure = 1;
    public const int Cancelled = 130;

    public static void SetGuardedAction(this Command command, Func<ParseResult, CancellationToken, int> work) =>
        command.SetAction(async (parseResult, ct) =>
        {
            try
            {
                return await Task.Run(() => work(parseResult, ct), ct);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                AnsiConsole.MarkupLine("[yellow]cancelled[/]");
                return Cancelled;
            }
            catch (Exception ex)
            {
                Report(ex);
                return Failure;
            }
        });

    private static void Report(Exception ex)
    {
        bool userError = ex is CliException or ArgumentException or FormatException or IOException or UnauthorizedAccessException;
        string prefix = userError ? "error" : $"internal error ({ex.GetType().Name})";
        AnsiConsole.MarkupLine($"[red]{prefix}:[/] {Markup.Escape(ex.Message)}");
        if (Environment.GetEnvironmentVariable("FLASH_ATTN_DEBUG") == "1")
            AnsiConsole.WriteLine(ex.ToString());
    }
}

/// <summary>A user-facing failure whose message says what to fix.</summary>
internal sealed class CliException(string message) : Exception(message);
