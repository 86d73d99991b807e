namespace FlashAttn.Training;

/// <summary>Parameter counts of a <see cref="LlamaConfig"/> model, as <see cref="Model.LlamaModel"/> builds it.</summary>
public static class ParameterCount
{
    /// <summary>The token embedding, vocab x hidden.</summary>
    public static long Embedding(LlamaConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return (long)config.VocabSize * config.Hidden;
    }

    /// <summary>The output head: vocab x hidden, or 0 when tied to the embedding.</summary>
    public static long Head(LlamaConfig config) => config.TiedHead ? 0 : Embedding(config);

    /// <summary>One layer's attention projections (no bias): q and o hidden x heads*headdim, k and v hidden x kv_heads*headdim.</summary>
    public static long Attention(LlamaConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        long queryWidth = (long)config.Heads * config.HeadDim, kvWidth = (long)config.KvHeads * config.HeadDim;
        return 2 * config.Hidden * queryWidth + 2 * config.Hidden * kvWidth;
    }

    /// <summary>One layer's SwiGLU projections (no bias): gate, up and down, each hidden x mlp.</summary>
    public static long Mlp(LlamaConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return 3L * config.Hidden * config.Mlp;
    }

    /// <summary>One decoder layer: attention, MLP and the two RMSNorm gains.</summary>
    public static long PerLayer(LlamaConfig config) => Attention(config) + Mlp(config) + 2L * config.Hidden;

    /// <summary>Parameters outside the layers: embedding, head (untied) and the final norm's gain.</summary>
    public static long OutsideLayers(LlamaConfig config) => Embedding(config) + Head(config) + config.Hidden;

    /// <summary>
    /// Every parameter of the model. LLaMA-7B's shape with 32 layers and a 32000 vocabulary gives 6 738 415 616, the
    /// published 6.7B.
    /// </summary>
    public static long Total(LlamaConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        return OutsideLayers(config) + config.Layers * PerLayer(config);
    }
}
