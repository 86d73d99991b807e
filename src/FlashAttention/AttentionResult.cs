using System.Numerics.Tensors;

namespace FlashAttn;

/// <summary>The result of a forward call.</summary>
/// <typeparam name="T">The element type of q, k, v and the output.</typeparam>
public sealed class AttentionResult<T>
{
    internal AttentionResult(Tensor<T> output, Tensor<float> logSumExp, DropoutState? dropoutState, Tensor<float>? probabilities)
    {
        Output = output;
        LogSumExp = logSumExp;
        DropoutState = dropoutState;
        Probabilities = probabilities;
    }

    /// <summary>The attention output, laid out like q: (batch, seqlen_q, heads_q, headdim), or (total_q, heads_q, headdim) for varlen.</summary>
    public Tensor<T> Output { get; }

    /// <summary>Log-sum-exp of each softmax row in fp32 (<c>softmax_lse</c>): (batch, heads_q, seqlen_q), or
    /// (heads_q, total_q) for varlen. A row that sees no key holds +inf (its output is 0); so does a row whose softmax read a NaN
    /// or +inf score (NaN or infinity in q or k), whose output is NaN, as flash-attn writes them.</summary>
    public Tensor<float> LogSumExp { get; }

    /// <summary>The Philox state used by dropout (<c>rng_state</c>); null when dropout is off.</summary>
    public DropoutState? DropoutState { get; }

    /// <summary>The attention probabilities when <see cref="AttentionOptions.ReturnProbabilities"/> was set:
    /// (batch, heads_q, max_seqlen_q, max_seqlen_k), zero where masked or padded, negated where dropped.</summary>
    public Tensor<float>? Probabilities { get; }
}

/// <summary>Gradients of separate q, k, v. dK and dV are summed over the query heads that share a key/value head (GQA/MQA).</summary>
/// <param name="DQ">Gradient of q, shaped like q.</param>
/// <param name="DK">Gradient of k, shaped like k.</param>
/// <param name="DV">Gradient of v, shaped like v.</param>
public sealed record AttentionGradients<T>(Tensor<T> DQ, Tensor<T> DK, Tensor<T> DV);

/// <summary>Gradient of a packed qkv tensor (batch, seqlen, 3, heads, headdim) or (total, 3, heads, headdim).</summary>
/// <param name="DQkv">Gradient shaped like qkv.</param>
public sealed record QkvPackedGradients<T>(Tensor<T> DQkv);

/// <summary>Gradients of q and a packed kv tensor (batch, seqlen_k, 2, heads_kv, headdim) or (total_k, 2, heads_kv, headdim).</summary>
/// <param name="DQ">Gradient shaped like q.</param>
/// <param name="DKv">Gradient shaped like kv.</param>
public sealed record KvPackedGradients<T>(Tensor<T> DQ, Tensor<T> DKv);
