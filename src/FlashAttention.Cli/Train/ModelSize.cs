using FlashAttn.Training;

namespace FlashAttn.Cli.Train;

/// <summary>Parameter and FLOP counts of a <see cref="LlamaConfig"/> model, for reports.</summary>
internal static class ModelSize
{
    /// <summary>Weights: token embedding, per layer Q/K/V/O projections (K and V at KvHeads x HeadDim), the SwiGLU MLP's three
    /// matrices and two RMSNorm gains, then the final norm and (unless tied) the output head.</summary>
    public static long Parameters(LlamaConfig c)
    {
        long hidden = c.Hidden, vocab = c.VocabSize;
        long head = c.TiedHead ? 0 : vocab * hidden;
        return vocab * hidden + c.Layers * (LayerMatmulWeights(c) + 2 * hidden) + hidden + head;
    }

    /// <summary>Model FLOPs of one trained token (forward + backward = 3 x forward): 6 per matmul weight (the layers' projections and
    /// the output head; the embedding lookup does none) plus causal attention's 6 x layers x context x hidden (QK^T and PV over
    /// half of the context on average).</summary>
    public static double TrainFlopsPerToken(LlamaConfig c, int context) =>
        6.0 * (c.Layers * (double)LayerMatmulWeights(c) + (double)c.VocabSize * c.Hidden) + 6.0 * c.Layers * (double)context * c.Hidden;

    private static long LayerMatmulWeights(LlamaConfig c)
    {
        long hidden = c.Hidden, kv = (long)c.KvHeads * c.HeadDim;
        return 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * c.Mlp;
    }

    /// <summary>"6.74B", "431M", "12.3K".</summary>
    public static string Format(long parameters) => parameters switch
    {
        >= 1_000_000_000 => $"{parameters / 1e9:0.00}B",
        >= 1_000_000 => $"{parameters / 1e6:0.#}M",
        >= 1_000 => $"{parameters / 1e3:0.#}K",
        _ => parameters.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };
}
