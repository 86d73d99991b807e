using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace FlashAttn.Cli.Bench;

/// <summary>
/// bench/results/&lt;device&gt;.json (DESIGN.md "Results format"): one JSON array holding the latest complete run of
/// each impl. Saving a run replaces the rows of the (impl, op) pairs it measured and keeps other rows untouched (with
/// any keys this tool does not know), so a decode-only run leaves the attention rows alone and the other way round;
/// the previous file moves to history/&lt;device&gt;-&lt;timestamp&gt;.json first.
/// </summary>
internal static class ResultsFile
{
    public sealed record Saved(string Path, string? HistoryPath);

    public static Saved Save(string directory, string deviceSlug, IReadOnlyList<BenchRow> rows)
    {
        Directory.CreateDirectory(directory);
        string path = Path.Combine(directory, deviceSlug + ".json");
        var measured = rows.Select(r => (r.Impl, r.Op)).ToHashSet();
        var kept = new List<JsonNode>();
        string? historyPath = null;
        if (File.Exists(path))
        {
            string old = File.ReadAllText(path);
            var oldRows = Parse(old, path);
            kept.AddRange(oldRows.Where(r => StringOf(r, "impl") is not { } impl || !measured.Contains((impl, StringOf(r, "op") ?? "attention")))
                .Select(r => r!.DeepClone()));
            string history = Path.Combine(directory, "history");
            Directory.CreateDirectory(history);
            historyPath = UniquePath(Path.Combine(history, $"{deviceSlug}-{Stamp(oldRows, path)}"));
            File.Move(path, historyPath);
        }
        kept.AddRange(rows.Select(r => JsonSerializer.SerializeToNode(r, BenchJson.Default.BenchRow)!));
        string temporary = path + ".tmp";
        File.WriteAllText(temporary, Format(kept));
        File.Move(temporary, path, overwrite: true);
        return new(path, historyPath);
    }

    /// <summary>The attention rows of the plain sweep in a results file (any impl; keys this tool does not write may be missing:
    /// gflops falls back to tflops, the FMA peak to 0). Feature-overhead rows (with a "feature" key) are left out: they measure
    /// other work on shapes the sweep also has; so are rows of other ops (op "decode": seqlen_q 1 against a KV cache,
    /// judged in bytes per second, not on the sweep's axes).</summary>
    public static List<BenchRow> Load(string path)
    {
        if (!File.Exists(path)) throw new CliException($"{path} does not exist; run `flash-attn bench` first or pass --results.");
        var rows = new List<BenchRow>();
        foreach (var node in Parse(File.ReadAllText(path), path))
        {
            if (node is not JsonObject row || (StringOf(row, "op") ?? "attention") != "attention" || row.ContainsKey("feature")) continue;
            double Number(string key) => row[key] is JsonValue v && v.TryGetValue<double>(out var x) ? x : double.NaN;
            double tflops = Number("tflops"), gflops = Number("gflops"), peak = Number("fma_peak_gflops");
            rows.Add(new BenchRow
            {
                Impl = StringOf(row, "impl") ?? "?",
                Mode = StringOf(row, "mode") ?? "fwd",
                Dtype = StringOf(row, "dtype") ?? "?",
                Batch = (int)Number("batch"),
                SeqlenQ = (int)Number("seqlen_q"),
                SeqlenK = (int)Number("seqlen_k"),
                Heads = (int)Number("heads"),
                HeadsKv = (int)Number("heads_kv"),
                Headdim = (int)Number("headdim"),
                Causal = row["causal"] is JsonValue c && c.TryGetValue<bool>(out var causal) && causal,
                Ms = Number("ms"),
                Tflops = tflops,
                Device = StringOf(row, "device") ?? "",
                Run = StringOf(row, "run") ?? "",
                Gflops = double.IsNaN(gflops) ? tflops * 1000 : gflops,
                FmaPeakGflops = double.IsNaN(peak) ? 0 : peak,
                Runs = 0,
                Vector = StringOf(row, "vector") ?? "",
            });
        }
        return rows;
    }

    /// <summary>The run's UTC start time in the results format: 2026-11-26T10:15:00Z.</summary>
    public static string FormatRun(DateTime utc) => utc.ToString("yyyy-MM-dd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture);

    /// <summary>One row per line: readable, and diffs show which rows changed.</summary>
    private static string Format(IEnumerable<JsonNode> rows) =>
        "[\n" + string.Join(",\n", rows.Select(r => "  " + r.ToJsonString())) + "\n]\n";

    private static JsonArray Parse(string text, string path)
    {
        try
        {
            return JsonNode.Parse(text) as JsonArray ?? throw new CliException($"{path} is not a JSON array of result rows; move it away and rerun.");
        }
        catch (JsonException ex)
        {
            throw new CliException($"{path} is not valid JSON ({ex.Message}); move it away and rerun.");
        }
    }

    /// <summary>The latest "run" of the old rows (compact, file-name safe), else the file's modification time.</summary>
    private static string Stamp(JsonArray oldRows, string path)
    {
        var runs = oldRows.Select(r => StringOf(r, "run"))
            .Select(s => DateTime.TryParse(s, CultureInfo.InvariantCulture, DateTimeStyles.AdjustToUniversal | DateTimeStyles.AssumeUniversal, out var t) ? t : (DateTime?)null)
            .Where(t => t is not null).ToList();
        var time = runs.Count > 0 ? runs.Max()!.Value : File.GetLastWriteTimeUtc(path);
        return time.ToString("yyyyMMdd'T'HHmmss'Z'", CultureInfo.InvariantCulture);
    }

    private static string? StringOf(JsonNode? row, string key) =>
        row is JsonObject obj && obj[key] is JsonValue value && value.TryGetValue<string>(out var s) ? s : null;

    private static string UniquePath(string stem)
    {
        string candidate = stem + ".json";
        for (int i = 2; File.Exists(candidate); i++) candidate = $"{stem}-{i}.json";
        return candidate;
    }
}
