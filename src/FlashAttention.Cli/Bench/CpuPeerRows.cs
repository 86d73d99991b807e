using System.Text.Json.Nodes;

namespace FlashAttn.Cli.Bench;

/// <summary>
/// The data side of the torch-cpu peer (bench/peers/torch_cpu.py): the case list it is handed (the same keys as the GPU
/// peer's), its rows read back as ordinary result rows, and the pairing of ours with them. No process here, so it is
/// testable without Python.
/// </summary>
internal static class CpuPeerRows
{
    public const string Impl = "torch-cpu";

    /// <summary>One entry of SHAPES.json: our (batch, seqlen, heads, headdim) case; heads_kv = heads, seqlen_k = seqlen_q.</summary>
    public static JsonObject ToPeerShape(BenchCase c) => new()
    {
        ["batch"] = c.Batch, ["seqlen_q"] = c.Seqlen, ["seqlen_k"] = c.Seqlen, ["heads"] = c.Heads, ["heads_kv"] = c.Heads,
        ["headdim"] = c.HeadDim, ["causal"] = c.Causal, ["dtype"] = c.DType.Name(), ["mode"] = c.Mode,
    };

    /// <summary>
    /// A row the script printed, as a result row of this run: GFLOP/s recomputed from its ms with our FLOP count, so
    /// both impls of a shape are divided by the same number, and the same run's FMA peak for "% of peak". Null when a
    /// key the row needs is missing or the time is not a positive number.
    /// </summary>
    public static BenchRow? FromPeer(JsonObject r, DeviceInfo device, string run, double peakGflops)
    {
        double Number(string key) => r[key] is JsonValue v && v.TryGetValue<double>(out var x) ? x : double.NaN;
        string? Text(string key) => r[key] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
        if (Text("dtype") is not { } dtype || !ElementTypes.Names.Contains(dtype) || Text("mode") is not { } mode || !BenchCase.Modes.Contains(mode)
            || r["causal"] is not JsonValue causalValue || !causalValue.TryGetValue<bool>(out bool causal))
            return null;
        double batch = Number("batch"), seqlen = Number("seqlen_q"), heads = Number("heads"), headDim = Number("headdim"), ms = Number("ms");
        if (!(batch >= 1 && seqlen >= 1 && heads >= 1 && headDim >= 1 && ms > 0 && double.IsFinite(ms)))
            return null;
        var c = new BenchCase(ElementTypes.Parse(dtype), mode, (int)batch, (int)seqlen, (int)heads, (int)headDim, causal);
        double runs = Number("runs"), threads = Number("threads");
        string capability = Text("cpu_capability") is { Length: > 0 } s ? s : "torch";
        return BenchRow.From(Impl, c, ms, double.IsNaN(runs) ? 0 : (int)runs, device, run, peakGflops, capability) with
        {
            Threads = double.IsNaN(threads) ? null : (int)threads,
            TorchVersion = Text("torch_version"),
        };
    }

    /// <summary>Ours over torch-cpu per shape, as a speed ratio (torch's ms / our ms: above 1, ours is faster); shapes
    /// with only one of the two are left out.</summary>
    public static Dictionary<(string Mode, string Dtype, int Batch, int Seqlen, int Heads, int Headdim, bool Causal), double> OursOverTorch(IEnumerable<BenchRow> rows)
    {
        var list = rows.ToList();
        var torch = list.Where(r => r.Impl == Impl).GroupBy(r => r.Shape).ToDictionary(g => g.Key, g => g.First());
        return list.Where(r => r.Impl == "ours" && torch.ContainsKey(r.Shape)).GroupBy(r => r.Shape)
            .ToDictionary(g => g.Key, g => torch[g.Key].Ms / g.First().Ms);
    }
}
