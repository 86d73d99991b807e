namespace FlashAttn.Training;

/// <summary>
/// A rough model of <see cref="Trainer"/>'s device memory (bf16 activations, 16 bytes of weight, gradient, master and
/// moments per parameter, no activation checkpointing), to pick the layer count of issue 8's experiment before trying it:
/// <see cref="EstimateMaxLayers"/> is a starting guess, which the caller confirms by training (an out of memory is a
/// <see cref="TrainResult.Failure"/>, not a crash).
/// </summary>
/// <remarks>
/// What autograd keeps per layer, for T = batch x context tokens (bytes): the two RMSNorms keep an fp32 copy of their input
/// (4Th), the bf16 normalised value (2Th) and their output, the projections' input (2Th): 16Th; q, k, v after the rotary
/// embedding: 2T(heads + 2 kv_heads)headdim, or 6Th for the unfused and SDPA cores, which repeat k and v heads for GQA; the
/// attention output (2Th); SwiGLU's gate, its SiLU, up and their product: 8T*mlp; the fused cores' fp32 log-sum-exp; and
/// for the unfused core the fp32 softmax and its bf16 cast, 6 bytes per score (7 with dropout's mask) over batch x heads
/// x context^2 scores. On top of what all layers keep: one layer's backward transients (about 12 bytes per score for the
/// unfused core, gradients of the MLP and norms, the fused backward's fp32 dQ accumulator), the fp32 logits and their
/// gradients (12 bytes per token per vocabulary entry), and a reserve for the CUDA context, libtorch's and cuBLAS's
/// workspaces and the caching allocator's fragmentation (1.5 GiB + 5% of the device).
/// </remarks>
public static class TrainingMemoryEstimate
{
    /// <summary>Bytes per parameter: bf16 weight and gradient (2 + 2), fp32 master and two AdamW moments (4 + 4 + 4).</summary>
    public const int BytesPerParameter = 16;

    /// <summary>Bytes per attention score the unfused core keeps for backward: fp32 softmax (4) and its bf16 cast (2).</summary>
    public const int UnfusedBytesPerScore = 6;

    /// <summary>Fixed part of the reserve for the CUDA context, library workspaces and modules: 1.5 GiB.</summary>
    public const long RuntimeReserveBytes = 3L << 29;

    /// <summary>Fraction of the device kept free for the caching allocator's fragmentation.</summary>
    public const double FragmentationFraction = 0.05;

    /// <summary>Activation bytes autograd keeps for one layer (see the remarks).</summary>
    public static long ActivationBytesPerLayer(LlamaConfig config, int batch, int context, AttentionKind kind, double dropout = 0)
    {
        Check(config, batch, context);
        long tokens = (long)batch * context;
        long hidden = config.Hidden, headWidth = (long)config.Heads * config.HeadDim;
        long norms = 16 * tokens * hidden;
        long qkv = kind == AttentionKind.Flash
            ? 2 * tokens * ((long)config.Heads + 2L * config.KvHeads) * config.HeadDim
            : 2 * tokens * 3 * headWidth;
        long output = 2 * tokens * headWidth;
        long mlp = 8 * tokens * config.Mlp;
        long core = kind == AttentionKind.Unfused
            ? (UnfusedBytesPerScore + (dropout > 0 ? 1 : 0)) * Scores(config, batch, context)
            : 4L * batch * config.Heads * context;
        return norms + qkv + output + mlp + core;
    }

    /// <summary>Bytes one layer adds: its parameters' 16 bytes each plus its activations.</summary>
    public static long BytesPerLayer(LlamaConfig config, int batch, int context, AttentionKind kind, double dropout = 0) =>
        BytesPerParameter * ParameterCount.PerLayer(config) + ActivationBytesPerLayer(config, batch, context, kind, dropout);

    /// <summary>
    /// Bytes that do not grow with the layer count: embedding, head and final norm (16 bytes per parameter), the fp32
    /// logits and their gradients, and one layer's backward transients. The runtime reserve is not included.
    /// </summary>
    public static long FixedBytes(LlamaConfig config, int batch, int context, AttentionKind kind)
    {
        Check(config, batch, context);
        long tokens = (long)batch * context;
        long weights = BytesPerParameter * ParameterCount.OutsideLayers(config);
        long logits = 12 * tokens * config.VocabSize;
        long transient = 8 * tokens * config.Mlp + 12 * tokens * config.Hidden
                         + (kind == AttentionKind.Unfused ? 12 * Scores(config, batch, context) : 4 * tokens * config.Hidden);
        return weights + logits + transient;
    }

    /// <summary>The runtime reserve on a device of <paramref name="deviceBytes"/>: 1.5 GiB plus 5%.</summary>
    public static long ReserveBytes(long deviceBytes) => RuntimeReserveBytes + (long)(FragmentationFraction * deviceBytes);

    /// <summary>Estimated peak of training <paramref name="config"/> (all its layers), runtime reserve excluded.</summary>
    public static long EstimateTrainingBytes(LlamaConfig config, int batch, int context, AttentionKind kind, double dropout = 0) =>
        FixedBytes(config, batch, context, kind) + config.Layers * BytesPerLayer(config, batch, context, kind, dropout);

    /// <summary>
    /// The largest layer count of <paramref name="perLayerShape"/> (its own <see cref="LlamaConfig.Layers"/> is ignored)
    /// that should train at <paramref name="batch"/> sequences of <paramref name="context"/> tokens on a device of
    /// <paramref name="deviceBytes"/> with the <paramref name="kind"/> attention: a starting guess to confirm by training
    /// (0 when not even the layer-free part fits). For LLaMA-7B's shape at batch 1, context 4096, on an 80 GB H100
    /// (85.5e9 bytes) it gives 9 layers for the unfused core and 18 for the fused ones.
    /// </summary>
    public static int EstimateMaxLayers(LlamaConfig perLayerShape, long deviceBytes, int context, AttentionKind kind, int batch = 1,
        double dropout = 0)
    {
        ArgumentNullException.ThrowIfNull(perLayerShape);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(deviceBytes);
        long available = deviceBytes - ReserveBytes(deviceBytes) - FixedBytes(perLayerShape, batch, context, kind);
        if (available <= 0)
            return 0;
        long perLayer = BytesPerLayer(perLayerShape, batch, context, kind, dropout);
        return (int)Math.Min(int.MaxValue, available / perLayer);
    }

    private static long Scores(LlamaConfig config, int batch, int context) => (long)batch * config.Heads * context * context;

    private static void Check(LlamaConfig config, int batch, int context)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(batch);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(context);
    }
}
