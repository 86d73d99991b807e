using FlashAttn.TorchSharp;
using TorchSharp;
using TorchSharp.Modules;

namespace FlashAttn.Training.Model;

/// <summary>
/// LLaMA's causal self-attention: q, k, v and output projections without bias, rotary embeddings on q and k, grouped-query
/// attention when <see cref="KvHeads"/> &lt; <see cref="Heads"/> (query head i reads key/value head i / (Heads / KvHeads)),
/// and an attention core chosen by <see cref="AttentionKind"/>:
/// <list type="bullet">
/// <item><see cref="AttentionKind.Unfused"/>: what PyTorch users wrote before fused kernels. k and v heads repeated for
/// GQA, <c>matmul(q, k^T) * scale</c>, -inf above the diagonal, softmax in float32 cast back to the model's dtype, dropout,
/// <c>matmul(p, v)</c>: the (batch, heads, seqlen, seqlen) scores and probabilities are materialised, and autograd keeps
/// the float32 probabilities and their cast (6 bytes per score, 7 with dropout's mask) for backward.</item>
/// <item><see cref="AttentionKind.Sdpa"/>: <c>torch.nn.functional.scaled_dot_product_attention(is_causal: true)</c> on
/// (batch, heads, seqlen, headdim); TorchSharp's binding has no <c>enable_gqa</c>, so k and v heads are repeated for GQA.
/// libtorch picks its backend (its FlashAttention-2 kernel for bf16/fp16 on sm80+ when the shape allows).</item>
/// <item><see cref="AttentionKind.Flash"/>: <see cref="FlashAttentionTorch.Attention"/> directly on (batch, seqlen, heads,
/// headdim), no transposes and no repeated heads (our kernels read GQA natively).</item>
/// </list>
/// </summary>
/// <remarks>
/// Dropout (probability <see cref="Dropout"/> on the attention probabilities) applies in training mode only. The flash
/// core draws its masks from our Philox generator with a per-layer seed (<c>dropoutSeed</c>) and a per-call counter, so a
/// run is reproducible; the other two use libtorch's CUDA generator (seeded by <c>torch.manual_seed</c>).
/// </remarks>
public sealed class CausalSelfAttention : torch.nn.Module<torch.Tensor, torch.Tensor>
{
    private readonly Linear _qProj;
    private readonly Linear _kProj;
    private readonly Linear _vProj;
    private readonly Linear _oProj;
    private readonly RotaryEmbedding _rotary;
    private readonly torch.Tensor? _causalMask;
    private readonly ulong _dropoutSeed;
    private long _dropoutCalls;

    /// <summary>Creates the projections (weights uninitialised: <see cref="LlamaModel"/> initialises every parameter).</summary>
    /// <param name="hidden">Model width.</param>
    /// <param name="heads">Query heads.</param>
    /// <param name="kvHeads">Key/value heads; divides <paramref name="heads"/>.</param>
    /// <param name="attention">The attention core.</param>
    /// <param name="dropout">Dropout probability on the attention probabilities (training mode), in [0, 1).</param>
    /// <param name="rotary">The model's shared rotary tables (not owned: not registered here, disposed by their owner).</param>
    /// <param name="causalMask">For <see cref="AttentionKind.Unfused"/>: a shared bool (n, n) tensor, true above the diagonal,
    /// n &gt;= the longest sequence (not owned). Ignored by the other cores.</param>
    /// <param name="dropoutSeed">Philox seed of the flash core's dropout masks.</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Dtype of the parameters.</param>
    public CausalSelfAttention(int hidden, int heads, int kvHeads, AttentionKind attention, double dropout, RotaryEmbedding rotary,
        torch.Tensor? causalMask, ulong dropoutSeed, torch.Device device, torch.ScalarType dtype) : base(nameof(CausalSelfAttention))
    {
        ArgumentNullException.ThrowIfNull(rotary);
        ArgumentOutOfRangeException.ThrowIfLessThan(heads, 1);
        if (hidden < 1 || hidden % heads != 0)
            throw new ArgumentException($"hidden ({hidden}) must be a positive multiple of heads ({heads}).", nameof(hidden));
        if (kvHeads < 1 || heads % kvHeads != 0)
            throw new ArgumentException($"kvHeads ({kvHeads}) must divide heads ({heads}).", nameof(kvHeads));
        if (!(dropout >= 0 && dropout < 1))
            throw new ArgumentOutOfRangeException(nameof(dropout), dropout, "The dropout probability must be in [0, 1).");
        if (!Enum.IsDefined(attention))
            throw new ArgumentOutOfRangeException(nameof(attention), attention, "Unknown attention kind.");
        if (attention == AttentionKind.Unfused && causalMask is null)
            throw new ArgumentNullException(nameof(causalMask), "The unfused core needs the causal mask.");
        Hidden = hidden;
        Heads = heads;
        KvHeads = kvHeads;
        HeadDim = hidden / heads;
        if (rotary.HeadDim != HeadDim)
            throw new ArgumentException($"The rotary tables are for head dimension {rotary.HeadDim}, not {HeadDim}.", nameof(rotary));
        Attention = attention;
        Dropout = dropout;
        _rotary = rotary;
        _causalMask = causalMask;
        _dropoutSeed = dropoutSeed;

        _qProj = torch.nn.Linear(hidden, (long)heads * HeadDim, hasBias: false, device: device, dtype: dtype);
        _kProj = torch.nn.Linear(hidden, (long)kvHeads * HeadDim, hasBias: false, device: device, dtype: dtype);
        _vProj = torch.nn.Linear(hidden, (long)kvHeads * HeadDim, hasBias: false, device: device, dtype: dtype);
        _oProj = torch.nn.Linear((long)heads * HeadDim, hidden, hasBias: false, device: device, dtype: dtype);
        register_module("q_proj", _qProj);
        register_module("k_proj", _kProj);
        register_module("v_proj", _vProj);
        register_module("o_proj", _oProj);
    }

    /// <summary>Model width.</summary>
    public int Hidden { get; }

    /// <summary>Query heads.</summary>
    public int Heads { get; }

    /// <summary>Key/value heads.</summary>
    public int KvHeads { get; }

    /// <summary>Head dimension, Hidden / Heads.</summary>
    public int HeadDim { get; }

    /// <summary>The attention core.</summary>
    public AttentionKind Attention { get; }

    /// <summary>Dropout probability on the attention probabilities (training mode only).</summary>
    public double Dropout { get; }

    /// <summary>Self-attention of <paramref name="x"/>, (batch, seqlen, hidden), to the same shape.</summary>
    public override torch.Tensor forward(torch.Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (x.ndim != 3 || x.shape[2] != Hidden)
            throw new ArgumentException($"x must be (batch, seqlen, {Hidden}); got ({string.Join(", ", x.shape)}).", nameof(x));
        long batch = x.shape[0], seqlen = x.shape[1];
        double dropout = training ? Dropout : 0.0;

        using var scope = torch.NewDisposeScope();
        // (batch, seqlen, heads, headdim): flash-attn's layout, in which the projections come out without a copy.
        var q = ProjectAndRotate(_qProj, x, Heads);
        var k = ProjectAndRotate(_kProj, x, KvHeads);
        var v = _vProj.forward(x).view(batch, seqlen, KvHeads, HeadDim);

        torch.Tensor context = Attention switch
        {
            AttentionKind.Flash => FlashCore(q, k, v, dropout),
            AttentionKind.Sdpa => SdpaCore(q, k, v, dropout),
            _ => UnfusedCore(q, k, v, dropout),
        };
        return _oProj.forward(context.reshape(batch, seqlen, (long)Heads * HeadDim)).MoveToOuterDisposeScope();
    }

    /// <summary>The projection of x as (batch, seqlen, heads, headdim), rotated; the unrotated projection (which autograd
    /// does not keep) is freed on return.</summary>
    private torch.Tensor ProjectAndRotate(Linear projection, torch.Tensor x, int heads)
    {
        using var projected = projection.forward(x);
        using var split = projected.view(x.shape[0], x.shape[1], heads, HeadDim);
        return _rotary.forward(split);
    }

    private torch.Tensor FlashCore(torch.Tensor q, torch.Tensor k, torch.Tensor v, double dropout)
    {
        var options = new AttentionOptions
        {
            Causal = true,
            DropoutProbability = (float)dropout,
            DropoutState = dropout > 0 ? new DropoutState(_dropoutSeed, (ulong)Interlocked.Increment(ref _dropoutCalls)) : null,
        };
        return FlashAttentionTorch.Attention(q, k, v, options); // (batch, seqlen, heads, headdim)
    }

    private torch.Tensor SdpaCore(torch.Tensor q, torch.Tensor k, torch.Tensor v, double dropout)
    {
        var output = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), RepeatKv(k).transpose(1, 2), RepeatKv(v).transpose(1, 2), p: dropout, is_casual: true);
        return output.transpose(1, 2); // (batch, seqlen, heads, headdim)
    }

    private torch.Tensor UnfusedCore(torch.Tensor q, torch.Tensor k, torch.Tensor v, double dropout)
    {
        long seqlen = q.shape[1];
        var qh = q.transpose(1, 2);                     // (batch, heads, seqlen, headdim)
        var kh = RepeatKv(k).transpose(1, 2);
        var vh = RepeatKv(v).transpose(1, 2);
        // Each intermediate is released as soon as the next op has consumed it (what Python's reference counting does);
        // autograd holds its own references to what backward needs.
        var scores = torch.matmul(qh, kh.transpose(-2, -1));
        var scaled = scores.mul(1.0 / Math.Sqrt(HeadDim));
        scores.Dispose();
        var mask = _causalMask!.narrow(0, 0, seqlen).narrow(1, 0, seqlen);
        var masked = scaled.masked_fill(mask, double.NegativeInfinity);
        scaled.Dispose();
        var probabilities32 = masked.softmax(-1, torch.ScalarType.Float32);
        masked.Dispose();
        var probabilities = probabilities32.to(q.dtype);
        probabilities32.Dispose();
        if (dropout > 0)
        {
            var dropped = torch.nn.functional.dropout(probabilities, dropout, training: true);
            probabilities.Dispose();
            probabilities = dropped;
        }
        var output = torch.matmul(probabilities, vh);
        probabilities.Dispose();
        return output.transpose(1, 2); // (batch, seqlen, heads, headdim)
    }

    /// <summary>(batch, seqlen, kv_heads, headdim) to (batch, seqlen, heads, headdim), each kv head repeated for its group.</summary>
    private torch.Tensor RepeatKv(torch.Tensor kv) =>
        KvHeads == Heads ? kv : kv.repeat_interleave(Heads / KvHeads, dim: 2);
}
