using System.Text.Json.Nodes;

namespace FlashAttn.Cli.Gpu;

/// <summary>One GPU benchmark shape (DESIGN.md's sweep: 16k tokens, hidden 2048, so heads = 2048 / headdim).</summary>
internal sealed record GpuBenchCase(string Dtype, int Batch, int Seqlen, int Heads, int HeadDim, bool Causal)
{
    public const string Mode = "fwd";

    /// <summary>flash-attn's convention: 4 b s_q s_k h d, halved for causal.</summary>
    public double Flops => 4.0 * Batch * Seqlen * Seqlen * Heads * HeadDim * (Causal ? 0.5 : 1.0);

    public nint[] Lengths => [Batch, Seqlen, Heads, HeadDim];

    public string Label => $"{Dtype} s{Seqlen} d{HeadDim}{(Causal ? " causal" : "")}";

    public static IEnumerable<GpuBenchCase> Sweep(IEnumerable<string> dtypes, IEnumerable<int> headDims, IEnumerable<int> seqlens, IEnumerable<bool> causal,
        int tokens = 16384, int hidden = 2048) =>
        from dtype in dtypes
        from d in headDims
        from c in causal
        from s in seqlens
        select new GpuBenchCase(dtype, Math.Max(1, tokens / s), s, hidden / d, d, c);

    public JsonObject ToPeerShape() => new()
    {
        ["batch"] = Batch, ["seqlen_q"] = Seqlen, ["seqlen_k"] = Seqlen, ["heads"] = Heads, ["heads_kv"] = Heads,
        ["headdim"] = HeadDim, ["causal"] = Causal, ["dtype"] = Dtype, ["mode"] = Mode,
    };
}
