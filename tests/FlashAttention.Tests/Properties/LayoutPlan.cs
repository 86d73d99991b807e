namespace FlashAttn.Tests.Properties;

/// <summary>How a case's operands sit in memory.</summary>
internal enum LayoutKind
{
    /// <summary>Dense row-major (batch, seqlen, heads, headdim) tensors.</summary>
    Dense,

    /// <summary>q, k, v and dO are views into larger buffers: padded head and row strides, heads-major or rows-major, at an offset.</summary>
    Padded,

    /// <summary>k and v are views of one (batch, seqlen_k, 2, heads_kv, headdim) buffer (flash-attn's kvpacked layout).</summary>
    PackedKv,

    /// <summary>q, k and v are views of one (batch, seqlen, 3, heads, headdim) buffer (needs seqlen_q = seqlen_k, heads_q = heads_kv).</summary>
    PackedQkv,
}

/// <summary>
/// The memory layout of a case. Head dim stays contiguous (the API requires it); every other stride is padded by
/// <see cref="HeadPad"/> (between head vectors) and <see cref="RowPad"/> (between token rows), the first element sits at
/// <see cref="Start"/>, and the gaps hold NaN, so reading outside the view poisons the result. For
/// <see cref="LayoutKind.Padded"/>, k and v get different strides from q (k flips the heads-major choice, v swaps the two
/// pads), so a kernel that mixes up operand strides fails too.
/// </summary>
internal sealed record LayoutPlan(LayoutKind Kind, bool HeadsMajor, int HeadPad, int RowPad, int Start)
{
    public static LayoutPlan Dense { get; } = new(LayoutKind.Dense, false, 0, 0, 0);

    public override string ToString() => Kind switch
    {
        LayoutKind.Dense => "dense",
        LayoutKind.Padded => $"padded({(HeadsMajor ? "heads-major" : "rows-major")} head+{HeadPad} row+{RowPad} start={Start})",
        LayoutKind.PackedKv => $"kv-packed(head+{HeadPad} row+{RowPad} start={Start})",
        _ => $"qkv-packed(head+{HeadPad} row+{RowPad} start={Start})",
    };
}
