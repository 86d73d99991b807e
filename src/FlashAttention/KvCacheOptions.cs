namespace FlashAttn;

/// <summary>
/// The decoding-only arguments of <c>flash_attn_with_kvcache</c> (the attention ones stay in <see cref="AttentionOptions"/>).
/// </summary>
public sealed record KvCacheOptions
{
    /// <summary>The defaults: interleaved rotary pairs, splits chosen automatically.</summary>
    public static KvCacheOptions Default { get; } = new();

    /// <summary>Rotary pairs (<c>rotary_interleaved</c>): true rotates dims (2i, 2i + 1) (GPT-J style, flash-attn's default);
    /// false rotates (i, i + rotary_dim / 2) (GPT-NeoX style).</summary>
    public bool RotaryInterleaved { get; init; } = true;

    /// <summary>Splits of the key dimension (<c>num_splits</c>): 0 picks a count that fills the GPU; 1 disables splitting.
    /// The CPU path ignores it.</summary>
    public int NumSplits { get; init; }
}
