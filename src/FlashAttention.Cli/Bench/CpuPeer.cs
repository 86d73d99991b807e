using System.Globalization;
using System.Text.Json.Nodes;
using FlashAttn.Cli.Gpu;
using Spectre.Console;

namespace FlashAttn.Cli.Bench;

/// <summary>
/// The CPU bench's PyTorch peer: bench/peers/torch_cpu.py, launched by the same <see cref="TorchPeers"/> as the GPU peers,
/// times SDPA on CPU tensors for the cases we just timed, with as many threads as our path uses (one per logical core).
/// Without the script or a python3 with torch, a yellow note and no rows: the bench goes on as without it.
/// </summary>
internal static class CpuPeer
{
    public const string ScriptName = "torch_cpu.py";

    /// <summary>Generous: a slow machine's full default sweep, warm-up and repeats included, takes minutes.</summary>
    private static readonly TimeSpan Timeout = TimeSpan.FromMinutes(30);

    /// <summary>The CPU peer script next to the GPU one (bench/peers/torch_sdpa.py -> bench/peers/torch_cpu.py).</summary>
    public static string ScriptBeside(string gpuPeerScript) =>
        Path.Combine(Path.GetDirectoryName(gpuPeerScript) is { Length: > 0 } folder ? folder : ".", ScriptName);

    public static List<BenchRow> Run(string script, IReadOnlyList<BenchCase> cases, int repeats, DeviceInfo device, string run, double peakGflops)
    {
        AnsiConsole.MarkupLine($"Running PyTorch's CPU attention ({CpuPeerRows.Impl}) on the same cases...");
        var shapes = new JsonArray([.. cases.Select(c => (JsonNode)CpuPeerRows.ToPeerShape(c))]);
        string threads = Environment.ProcessorCount.ToString(CultureInfo.InvariantCulture);
        var outcome = TorchPeers.Run(script, shapes, run, Timeout, [threads, repeats.ToString(CultureInfo.InvariantCulture)]);
        if (outcome.Note is not null) AnsiConsole.MarkupLine($"[yellow]note:[/] {Markup.Escape(outcome.Note)}");
        var rows = outcome.Rows.Select(r => CpuPeerRows.FromPeer(r, device, run, peakGflops)).OfType<BenchRow>().ToList();
        if (rows.Count < outcome.Rows.Count)
            AnsiConsole.MarkupLine($"[yellow]note:[/] {outcome.Rows.Count - rows.Count} {CpuPeerRows.Impl} row(s) could not be read and were left out.");
        if (rows.Count > 0)
            AnsiConsole.MarkupLine($"{CpuPeerRows.Impl}: PyTorch {Markup.Escape(rows[0].TorchVersion ?? "?")}, {rows[0].Threads?.ToString(CultureInfo.InvariantCulture) ?? "?"} threads, " +
                $"{Markup.Escape(rows[0].Vector)} kernels; {rows.Count} of {cases.Count} cases");
        return rows;
    }
}
