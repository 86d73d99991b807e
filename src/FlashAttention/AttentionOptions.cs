using System.Numerics.Tensors;

namespace FlashAttn;

/// <summary>
/// Options of one attention call, shared by every execution path and by forward and backward
/// (the arguments of flash-attn's <c>flash_attn_func</c> after q, k, v).
/// </summary>
public sealed record AttentionOptions
{
    /// <summary>The default options: no mask, scale 1/sqrt(headdim), no dropout.</summary>
    public static AttentionOptions Default { get; } = new();

    /// <summary>Causal mask aligned to the bottom-right corner (<c>causal</c>): query i sees key j when
    /// j &lt;= i + seqlen_k - seqlen_q. Equivalent to <see cref="WindowRight"/> = 0.</summary>
    public bool Causal { get; init; }

    /// <summary>Multiplier of QK^T before softmax (<c>softmax_scale</c>), positive; null means 1/sqrt(headdim).</summary>
    public float? SoftmaxScale { get; init; }

    /// <summary>Dropout probability in [0, 1) (<c>dropout_p</c>).</summary>
    public float DropoutProbability { get; init; }

    /// <summary>Philox seed and offset for dropout; null draws them from the process-wide generator
    /// (<see cref="DropoutState.Next"/>). The result reports the state used.</summary>
    public DropoutState? DropoutState { get; init; }

    /// <summary>Sliding window, keys to the left of the diagonal that stay visible (<c>window_size[0]</c>);
    /// -1 means unlimited.</summary>
    public int WindowLeft { get; init; } = -1;

    /// <summary>Sliding window, keys to the right of the diagonal that stay visible (<c>window_size[1]</c>);
    /// -1 means unlimited. Causal forces 0.</summary>
    public int WindowRight { get; init; } = -1;

    /// <summary>Tanh soft-capping (<c>softcap</c>): scores become cap * tanh(scale * QK^T / cap); 0 disables.</summary>
    public float Softcap { get; init; }

    /// <summary>ALiBi slopes (<c>alibi_slopes</c>), shape (heads_q) or (batch, heads_q), fp32: the score of
    /// query i and key j gets -slope * |i + seqlen_k - seqlen_q - j| added after scaling.</summary>
    public Tensor<float>? AlibiSlopes { get; init; }

    /// <summary>Deterministic backward (<c>deterministic</c>): dQ is reduced in a fixed order so repeated runs
    /// are bitwise identical. The CPU path is always deterministic.</summary>
    public bool Deterministic { get; init; }

    /// <summary>Also return the attention probabilities, (batch, heads_q, seqlen_q, seqlen_k) fp32, for testing
    /// (<c>return_attn_probs</c>). Elements dropped by dropout are returned negated, as flash-attn does.</summary>
    public bool ReturnProbabilities { get; init; }

    /// <summary>The effective left window: -1 (unlimited) or the given count.</summary>
    internal int EffectiveWindowLeft => WindowLeft;

    /// <summary>The effective right window: causal forces 0.</summary>
    internal int EffectiveWindowRight => Causal ? 0 : WindowRight;

    /// <summary>True when some key may be hidden from some query.</summary>
    internal bool HasMask => EffectiveWindowLeft >= 0 || EffectiveWindowRight >= 0;
}
