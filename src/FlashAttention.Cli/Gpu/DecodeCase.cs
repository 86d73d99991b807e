using System.Text.Json.Nodes;

namespace FlashAttn.Cli.Gpu;

/// <summary>
/// One KV-cache decoding row (issue 6): one new query token per sequence (seqlen_q 1, not causal) attending over a full bf16
/// cache of <paramref name="CacheLength"/> tokens, 32 query heads over 8 KV heads of 128 (a Llama-3-8B layer). The cache is
/// contiguous (batch, cache, 8, 128) (flash-attn's layout), head-major (stored (batch, 8, cache, 128), PyTorch SDPA's layout, and
/// passed as a strided (batch, cache, 8, 128) view), or paged: pages of <see cref="PageSize"/> rows reached through a shuffled
/// block table.
/// </summary>
internal sealed record DecodeCase(int Batch, int CacheLength, DecodeLayout Layout = DecodeLayout.Contiguous)
{
    public const int Heads = 32, HeadsKv = 8, HeadDim = 128, PageSize = 256, ElementBytes = 2;
    public const string Dtype = "bf16", PagedFeature = "paged", HeadMajorFeature = "head-major";

    public bool Paged => Layout == DecodeLayout.Paged;

    /// <summary>Batches and cache lengths of the grid; shapes past <see cref="MaxCachedTokens"/> are left out, as in the PyTorch anchors
    /// (../shared/anchors/torch_more_anchors.py).</summary>
    public static readonly int[] Batches = [1, 8, 16, 64], CacheLengths = [1024, 8192, 32768, 131072];

    /// <summary>Batch x cache length at most 64 x 32768 (2M tokens: 8 GiB of K and V per buffer set).</summary>
    public const long MaxCachedTokens = 64L * 32768;

    /// <summary>Rotated buffer sets hold together at least this many times the L2 cache, so calls read the cache from HBM.</summary>
    public const int RotationL2Multiple = 4;

    /// <summary>Bytes of K and V one call reads: 2 x batch x cache x heads_kv x headdim x 2.</summary>
    public long KvBytes => 2L * Batch * CacheLength * HeadsKv * HeadDim * ElementBytes;

    /// <summary>flash-attn's convention with seqlen_q 1: 4 b s_q s_k h d.</summary>
    public double Flops => 4.0 * Batch * CacheLength * Heads * HeadDim;

    /// <summary>Pages per sequence in the paged layout.</summary>
    public int BlocksPerSequence => (CacheLength + PageSize - 1) / PageSize;

    /// <summary>DESIGN.md's feature key: "paged" or "head-major", null for the contiguous cache.</summary>
    public string? Feature => Layout switch { DecodeLayout.Paged => PagedFeature, DecodeLayout.HeadMajor => HeadMajorFeature, _ => null };

    public string Label => $"decode b{Batch} cache {CacheLength}{(Feature is { } f ? " " + f : "")}";

    /// <summary>Independent (q, K, V) sets to cycle through: at least 2, and enough that their K and V exceed
    /// <see cref="RotationL2Multiple"/> x <paramref name="l2Bytes"/>.</summary>
    public int BufferSets(long l2Bytes) => (int)Math.Max(2, (RotationL2Multiple * l2Bytes + KvBytes - 1) / KvBytes);

    /// <summary>The grid, contiguous rows first, then (with <paramref name="layouts"/>) the same shapes head-major and paged.</summary>
    public static IEnumerable<DecodeCase> Standard(bool layouts = true)
    {
        foreach (var layout in layouts ? Enum.GetValues<DecodeLayout>() : [DecodeLayout.Contiguous])
            foreach (int batch in Batches)
                foreach (int cache in CacheLengths)
                    if ((long)batch * cache <= MaxCachedTokens)
                        yield return new DecodeCase(batch, cache, layout);
    }

    /// <summary>The shape bench/peers/torch_decode.py measures (contiguous caches only).</summary>
    public JsonObject ToPeerShape() => new()
    {
        ["batch"] = Batch, ["seqlen_q"] = 1, ["seqlen_k"] = CacheLength, ["heads"] = Heads, ["heads_kv"] = HeadsKv,
        ["headdim"] = HeadDim, ["dtype"] = Dtype,
    };
}

/// <summary>How a decode row's cache is laid out in memory.</summary>
internal enum DecodeLayout
{
    /// <summary>(batch, cache, heads_kv, headdim), flash-attn's layout.</summary>
    Contiguous,

    /// <summary>(batch, heads_kv, cache, headdim) storage, PyTorch SDPA's layout, as a strided view.</summary>
    HeadMajor,

    /// <summary>Pages of <see cref="DecodeCase.PageSize"/> rows through a shuffled block table.</summary>
    Paged,
}
