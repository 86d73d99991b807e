using TorchSharp;
using TorchSharp.Modules;

namespace FlashAttn.TorchSharp;

/// <summary>
/// Multi-head self-attention on our kernels (flash-attn's <c>flash_attn.modules.mha.MHA</c>, self-attention part): a
/// fused q/k/v projection (<c>Wqkv</c>), attention through <see cref="FlashAttentionTorch"/>, and an output projection
/// (<c>out_proj</c>). Input and output are (batch, seqlen, embed_dim). With fewer key/value heads than query heads
/// (GQA/MQA), the projection yields heads*headdim query features followed by 2*kv_heads*headdim key/value features, as
/// flash-attn's MHA lays them out; its state-dict names (<c>Wqkv.weight</c>, <c>out_proj.weight</c>...) match too.
/// </summary>
/// <remarks>
/// The projection output is viewed as (batch, seqlen, 3, heads, headdim) (or q plus a packed kv for GQA) without copies;
/// dropout on the attention probabilities applies in training mode only. Dtype and device rules are those of
/// <see cref="FlashAttentionTorch"/>: fp16/bf16 on CUDA, fp32/fp16/bf16 on the CPU.
/// </remarks>
public sealed class FlashMultiHeadAttention : torch.nn.Module<torch.Tensor, torch.Tensor>
{
    // Field names are the submodule names TorchSharp registers (and the state-dict prefixes): flash-attn's.
#pragma warning disable IDE1006 // naming: kept as flash-attn names them, for state-dict compatibility
    private readonly Linear Wqkv;
    private readonly Linear out_proj;
#pragma warning restore IDE1006

    /// <summary>Creates the module.</summary>
    /// <param name="embedDim">Model width (embed_dim); a multiple of <paramref name="numHeads"/>.</param>
    /// <param name="numHeads">Query heads (num_heads).</param>
    /// <param name="numKvHeads">Key/value heads (num_heads_kv) for GQA/MQA; must divide <paramref name="numHeads"/>; null for
    /// <paramref name="numHeads"/>.</param>
    /// <param name="causal">Causal self-attention (causal).</param>
    /// <param name="dropout">Dropout probability on the attention probabilities in training mode (dropout), in [0, 1).</param>
    /// <param name="softmaxScale">Multiplier of QK^T (softmax_scale); null for 1/sqrt(headdim).</param>
    /// <param name="bias">Whether the projections have biases (qkv_proj_bias and out_proj_bias).</param>
    /// <param name="device">Device of the parameters; null for the CPU.</param>
    /// <param name="dtype">Dtype of the parameters; null for float32.</param>
    /// <param name="name">Module name.</param>
    public FlashMultiHeadAttention(long embedDim, long numHeads, long? numKvHeads = null, bool causal = false, double dropout = 0.0,
        float? softmaxScale = null, bool bias = true, torch.Device? device = null, torch.ScalarType? dtype = null,
        string name = nameof(FlashMultiHeadAttention)) : base(name)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(numHeads, 1);
        if (embedDim < 1 || embedDim % numHeads != 0)
            throw new ArgumentException($"embedDim ({embedDim}) must be a positive multiple of numHeads ({numHeads}).", nameof(embedDim));
        long kvHeads = numKvHeads ?? numHeads;
        if (kvHeads < 1 || numHeads % kvHeads != 0)
            throw new ArgumentException($"numKvHeads ({kvHeads}) must divide numHeads ({numHeads}).", nameof(numKvHeads));
        if (!(dropout >= 0 && dropout < 1))
            throw new ArgumentOutOfRangeException(nameof(dropout), dropout, "The dropout probability must be in [0, 1).");
        EmbedDim = embedDim;
        NumHeads = numHeads;
        NumKvHeads = kvHeads;
        HeadDim = embedDim / numHeads;
        Causal = causal;
        Dropout = dropout;
        SoftmaxScale = softmaxScale;
        Wqkv = torch.nn.Linear(embedDim, (numHeads + 2 * kvHeads) * HeadDim, bias, device, dtype);
        out_proj = torch.nn.Linear(embedDim, embedDim, bias, device, dtype);
        RegisterComponents();
    }

    /// <summary>Model width.</summary>
    public long EmbedDim { get; }

    /// <summary>Query heads.</summary>
    public long NumHeads { get; }

    /// <summary>Key/value heads (equal to <see cref="NumHeads"/> without GQA).</summary>
    public long NumKvHeads { get; }

    /// <summary>Head dimension, EmbedDim / NumHeads.</summary>
    public long HeadDim { get; }

    /// <summary>Causal self-attention.</summary>
    public bool Causal { get; }

    /// <summary>Dropout probability on the attention probabilities (training mode only).</summary>
    public double Dropout { get; }

    /// <summary>Multiplier of QK^T; null for 1/sqrt(headdim).</summary>
    public float? SoftmaxScale { get; }

    /// <summary>The fused q/k/v projection (<c>Wqkv</c>): EmbedDim to (NumHeads + 2 NumKvHeads) HeadDim features.</summary>
    public Linear QkvProjection => Wqkv;

    /// <summary>The output projection (<c>out_proj</c>).</summary>
    public Linear OutputProjection => out_proj;

    /// <summary>Self-attention of <paramref name="x"/>, (batch, seqlen, embed_dim), to the same shape.</summary>
    public override torch.Tensor forward(torch.Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (x.ndim != 3 || x.shape[2] != EmbedDim)
            throw new ArgumentException($"x must be (batch, seqlen, {EmbedDim}); got ({string.Join(", ", x.shape)}).", nameof(x));
        long batch = x.shape[0], seqlen = x.shape[1];
        var options = new AttentionOptions
        {
            Causal = Causal,
            SoftmaxScale = SoftmaxScale,
            DropoutProbability = training ? (float)Dropout : 0f,
        };

        using var scope = torch.NewDisposeScope();
        var qkv = Wqkv.forward(x);
        torch.Tensor context;
        if (NumKvHeads == NumHeads)
        {
            context = FlashAttentionTorch.AttentionQkvPacked(qkv.view(batch, seqlen, 3, NumHeads, HeadDim), options);
        }
        else
        {
            long queryFeatures = NumHeads * HeadDim;
            var q = qkv.narrow(-1, 0, queryFeatures).view(batch, seqlen, NumHeads, HeadDim);
            var kv = qkv.narrow(-1, queryFeatures, 2 * NumKvHeads * HeadDim).view(batch, seqlen, 2, NumKvHeads, HeadDim);
            context = FlashAttentionTorch.AttentionKvPacked(q, kv, options);
        }
        return out_proj.forward(context.view(batch, seqlen, EmbedDim)).MoveToOuterDisposeScope();
    }
}
