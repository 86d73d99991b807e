namespace FlashAttn.Training;

/// <summary>Which attention a <see cref="LlamaConfig"/> model runs (issue 8's three contenders).</summary>
public enum AttentionKind
{
    /// <summary>The article's "native attention": QK^T, causal mask, softmax, dropout and PV as separate TorchSharp ops (O(s^2) memory).</summary>
    Unfused,

    /// <summary>TorchSharp's scaled_dot_product_attention (libtorch picks its fused backend).</summary>
    Sdpa,

    /// <summary>FlashAttention.NET through <see cref="FlashAttn.TorchSharp.FlashAttentionTorch"/>.</summary>
    Flash,
}

/// <summary>Shape of a LLaMA-style decoder: RMSNorm, rotary embeddings, SwiGLU MLP, optional GQA, tied or untied head.</summary>
/// <param name="VocabSize">Tokenizer vocabulary.</param>
/// <param name="Hidden">Model width (LLaMA-7B: 4096).</param>
/// <param name="Heads">Query heads (LLaMA-7B: 32 of 128).</param>
/// <param name="KvHeads">Key/value heads (= Heads without GQA).</param>
/// <param name="Mlp">SwiGLU inner width (LLaMA-7B: 11008).</param>
/// <param name="Layers">Decoder layers.</param>
/// <param name="TiedHead">Share the embedding matrix with the output head.</param>
/// <param name="RopeTheta">Rotary base.</param>
public sealed record LlamaConfig(int VocabSize, int Hidden, int Heads, int KvHeads, int Mlp, int Layers, bool TiedHead = false, double RopeTheta = 10000)
{
    /// <summary>Width of one head: Hidden / Heads.</summary>
    public int HeadDim => Hidden / Heads;

    /// <summary>LLaMA-7B's layer shape with <paramref name="layers"/> layers.</summary>
    public static LlamaConfig Llama7B(int layers, int vocabSize) => new(vocabSize, 4096, 32, 32, 11008, layers);

    /// <summary>The tiny configuration of the GPU test: 2 layers, hidden 256 (4 heads of 64).</summary>
    public static LlamaConfig Tiny(int vocabSize) => new(vocabSize, 256, 4, 4, 688, 2);
}

/// <summary>One training run.</summary>
/// <param name="Attention">The attention the model uses.</param>
/// <param name="Batch">Sequences per step.</param>
/// <param name="Context">Tokens per sequence.</param>
/// <param name="Steps">Optimizer steps.</param>
/// <param name="Seed">Seeds the weights and the data order (same seed, same losses across attentions up to bf16 noise).</param>
/// <param name="LearningRate">AdamW learning rate.</param>
/// <param name="Dropout">Attention dropout probability (0 for the loss-agreement check).</param>
/// <param name="WarmupSteps">Steps excluded from tokens/s (compilation, allocator warm-up).</param>
public sealed record TrainSettings(AttentionKind Attention, int Batch, int Context, int Steps, int Seed = 1234, double LearningRate = 3e-4,
    double Dropout = 0.0, int WarmupSteps = 2);

/// <summary>One optimizer step: the loss and its wall time (device synchronised).</summary>
public sealed record StepResult(int Step, double Loss, double Seconds, long Tokens);

/// <summary>The outcome of a run. <see cref="Failure"/> is set (e.g. "out of memory at step 0") when it could not train.</summary>
public sealed record TrainResult(LlamaConfig Config, TrainSettings Settings, IReadOnlyList<StepResult> Steps, double TokensPerSecond,
    long PeakMemoryBytes, string? Failure);

/// <summary>Token batches for training: each call returns batch x (context + 1) token ids, row-major (inputs and shifted targets).</summary>
public interface ITokenSource
{
    /// <summary>Vocabulary of the tokenizer behind the ids.</summary>
    int VocabSize { get; }

    /// <summary>The next batch of sequences; deterministic for a given seed.</summary>
    long[] Next(int batch, int context);
}
