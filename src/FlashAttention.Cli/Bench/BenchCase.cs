namespace FlashAttn.Cli.Bench;

/// <summary>One benchmarked shape and mode. heads_kv = heads and seqlen_q = seqlen_k.</summary>
internal sealed record BenchCase(ElementType DType, string Mode, int Batch, int Seqlen, int Heads, int HeadDim, bool Causal)
{
    public static readonly string[] Modes = ["fwd", "bwd", "fwdbwd"];

    /// <summary>flash-attn's convention (DESIGN.md "Benchmarks"): fwd = 4 b s_q s_k h d, halved for causal;
    /// bwd = 2.5x fwd, so fwd+bwd = 3.5x fwd.</summary>
    public double Flops
    {
        get
        {
            double forward = 4.0 * Batch * Seqlen * Seqlen * Heads * HeadDim * (Causal ? 0.5 : 1.0);
            return Mode switch { "fwd" => forward, "bwd" => 2.5 * forward, _ => 3.5 * forward };
        }
    }

    public string Label => $"{Mode} {DType.Name()} s{Seqlen} d{HeadDim}{(Causal ? " causal" : "")}";
}
