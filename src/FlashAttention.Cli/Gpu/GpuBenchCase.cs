using System.Text.Json.Nodes;

namespace FlashAttn.Cli.Gpu;

/// <summary>One GPU benchmark shape and mode (DESIGN.md's sweep: 16k tokens, hidden 2048, so heads = 2048 / headdim).</summary>
internal sealed record GpuBenchCase(string Dtype, int Batch, int Seqlen, int Heads, int HeadDim, bool Causal, string Mode = "fwd")
{
    /// <summary>flash-attn's convention: fwd = 4 b s_q s_k h d, halved for causal; bwd = 2.5x fwd; fwd+bwd = 3.5x.</summary>
    public double Flops => 4.0 * Batch * Seqlen * Seqlen * Heads * HeadDim * (Causal ? 0.5 : 1.0) * Mode switch { "fwd" => 1.0, "bwd" => 2.5, _ => 3.5 };

    /// <summary>The article's shape (SEED.md): batch 4, seqlen 4096, 32 heads of 128, fp16, causal, forward+backward.</summary>
    public static GpuBenchCase Seed => new("fp16", 4, 4096, 32, 128, true, "fwdbwd");

    public nint[] Lengths => [Batch, Seqlen, Heads, HeadDim];

    public string Label => $"{Mode} {Dtype} b{Batch} s{Seqlen} d{HeadDim}{(Causal ? " causal" : "")}";

    public static IEnumerable<GpuBenchCase> Sweep(IEnumerable<string> dtypes, IEnumerable<int> headDims, IEnumerable<int> seqlens, IEnumerable<bool> causal,
        IEnumerable<string> modes, int tokens = 16384, int hidden = 2048) =>
        from mode in modes
        from dtype in dtypes
        from d in headDims
        from c in causal
        from s in seqlens
        select new GpuBenchCase(dtype, Math.Max(1, tokens / s), s, hidden / d, d, c, mode);

    public JsonObject ToPeerShape() => new()
    {
        ["batch"] = Batch, ["seqlen_q"] = Seqlen, ["seqlen_k"] = Seqlen, ["heads"] = Heads, ["heads_kv"] = Heads,
        ["headdim"] = HeadDim, ["causal"] = Causal, ["dtype"] = Dtype, ["mode"] = Mode,
    };
}
