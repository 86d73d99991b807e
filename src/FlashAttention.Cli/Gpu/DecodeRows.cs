using System.Text.Json.Nodes;
using FlashAttn.Cli.Bench;

namespace FlashAttn.Cli.Gpu;

/// <summary>Decode rows in DESIGN.md's results format: op "decode", mode "fwd", seqlen_q 1, seqlen_k = cache length, ms per call,
/// kv_tbps (K+V bytes per call over it) and the same run's copy_tbps; tflops by flash-attn's convention (4 b s_k h d).</summary>
internal static class DecodeRows
{
    public const string Op = "decode";

    /// <summary>Our row for one case.</summary>
    public static BenchRow Ours(DecodeCase c, double ms, int runs, double copyTbps, string device, string run)
    {
        double tflops = c.Flops / ms / 1e9;
        return new BenchRow
        {
            Impl = "ours", Op = Op, Mode = "fwd", Dtype = DecodeCase.Dtype, Batch = c.Batch, SeqlenQ = 1, SeqlenK = c.CacheLength,
            Heads = DecodeCase.Heads, HeadsKv = DecodeCase.HeadsKv, Headdim = DecodeCase.HeadDim, Causal = false, Ms = Math.Round(ms, 5),
            Tflops = Math.Round(tflops, 2), Device = device, Run = run, Gflops = Math.Round(tflops * 1000, 0), FmaPeakGflops = 0, Runs = runs,
            Vector = "cuda", Feature = c.Feature, KvTbps = Math.Round(Tbps(c.KvBytes, ms), 3), CopyTbps = Math.Round(copyTbps, 3),
        };
    }

    /// <summary>A row printed by bench/peers/torch_decode.py (missing numbers read as NaN, a missing copy_tbps as null).</summary>
    public static BenchRow FromPeer(JsonObject r)
    {
        double Number(string key) => r[key] is JsonValue v && v.TryGetValue<double>(out var x) ? x : double.NaN;
        string Text(string key, string fallback) => r[key] is JsonValue v && v.TryGetValue<string>(out var s) ? s : fallback;
        double? Optional(string key) => double.IsNaN(Number(key)) ? null : Math.Round(Number(key), 3);
        double tflops = Number("tflops");
        return new BenchRow
        {
            Impl = Text("impl", "torch"), Op = Text("op", Op), Mode = Text("mode", "fwd"), Dtype = Text("dtype", DecodeCase.Dtype),
            Batch = (int)Number("batch"), SeqlenQ = (int)Number("seqlen_q"), SeqlenK = (int)Number("seqlen_k"), Heads = (int)Number("heads"),
            HeadsKv = (int)Number("heads_kv"), Headdim = (int)Number("headdim"),
            Causal = r["causal"] is JsonValue c && c.TryGetValue<bool>(out var causal) && causal,
            Ms = Math.Round(Number("ms"), 5), Tflops = Math.Round(tflops, 2), Device = Text("device", ""), Run = Text("run", ""),
            Gflops = Math.Round(tflops * 1000, 0), FmaPeakGflops = 0, Runs = double.IsNaN(Number("runs")) ? 0 : (int)Number("runs"),
            Vector = "torch", Feature = r["feature"] is JsonValue f && f.TryGetValue<string>(out var feature) ? feature : null,
            KvTbps = Optional("kv_tbps"), CopyTbps = Optional("copy_tbps"),
        };
    }

    /// <summary>Bytes per call over milliseconds per call, in TB/s (1e12 bytes/s).</summary>
    public static double Tbps(double bytes, double ms) => bytes / (ms * 1e-3) / 1e12;
}
