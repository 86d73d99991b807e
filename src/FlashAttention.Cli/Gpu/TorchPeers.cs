using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FlashAttn.Cli.Gpu;

/// <summary>
/// Runs a PyTorch peer script (bench/peers/torch_sdpa.py: SDPA's flash, cuDNN and math backends; bench/peers/torch_decode.py:
/// KV-cache decoding; bench/peers/torch_cpu.py: SDPA on CPU tensors) on the same shapes in the same invocation, when python3
/// with torch is on the machine; the bench works without it and says so. A script takes SHAPES.json and the run's ISO time
/// (then any script-specific arguments) and prints a JSON array of result rows.
/// </summary>
internal static class TorchPeers
{
    public sealed record Outcome(IReadOnlyList<JsonObject> Rows, string? Note);

    public static Outcome Run(string script, IEnumerable<GpuBenchCase> cases, string run, TimeSpan timeout) =>
        Run(script, new JsonArray([.. cases.Select(c => (JsonNode)c.ToPeerShape())]), run, timeout);

    /// <param name="arguments">Passed after SHAPES.json and the run's time (torch_cpu.py: threads and repeats).</param>
    public static Outcome Run(string script, JsonArray shapeList, string run, TimeSpan timeout, IEnumerable<string>? arguments = null)
    {
        if (!File.Exists(script))
            return new([], $"peer script {script} not found: PyTorch peers skipped (run from the repository root or pass --peers).");
        string shapes = Path.Combine(Path.GetTempPath(), $"flash-attn-{Path.GetFileNameWithoutExtension(script)}-{Environment.ProcessId}.json");
        File.WriteAllText(shapes, shapeList.ToJsonString());
        try
        {
            var start = new ProcessStartInfo("python3") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
            foreach (var argument in new[] { script, shapes, run }.Concat(arguments ?? [])) start.ArgumentList.Add(argument);
            using var process = Process.Start(start) ?? throw new InvalidOperationException("python3 did not start");
            var stderr = process.StandardError.ReadToEndAsync();
            string stdout = process.StandardOutput.ReadToEnd();
            if (!process.WaitForExit(timeout))
            {
                process.Kill(entireProcessTree: true);
                return new([], "PyTorch peers timed out: skipped.");
            }
            if (process.ExitCode != 0)
                return new([], "PyTorch peers failed (is torch installed for python3?): " + FirstLine(stderr.Result));
            var rows = JsonNode.Parse(stdout) as JsonArray ?? [];
            return new([.. rows.OfType<JsonObject>()], string.IsNullOrWhiteSpace(stderr.Result) ? null : FirstLine(stderr.Result));
        }
        catch (Exception error) when (error is System.ComponentModel.Win32Exception or InvalidOperationException or JsonException)
        {
            return new([], $"PyTorch peers unavailable ({error.Message}): skipped.");
        }
        finally
        {
            File.Delete(shapes);
        }
    }

    private static string FirstLine(string text) => text.Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault()?.Trim() ?? "";
}
