using TorchSharp;

namespace FlashAttn.Training.Model;

/// <summary>One pre-norm LLaMA block: <c>h = x + attn(norm1(x))</c>, <c>out = h + mlp(norm2(h))</c>.</summary>
public sealed class DecoderLayer : torch.nn.Module<torch.Tensor, torch.Tensor>
{
    private readonly RmsNorm _inputNorm;
    private readonly CausalSelfAttention _attention;
    private readonly RmsNorm _postAttentionNorm;
    private readonly SwiGluMlp _mlp;

    /// <summary>Creates the block's modules (matrices uninitialised: <see cref="LlamaModel"/> initialises them).</summary>
    /// <param name="config">The model's shape.</param>
    /// <param name="attention">The attention core.</param>
    /// <param name="dropout">Attention dropout probability (training mode).</param>
    /// <param name="rotary">The model's shared rotary tables (not owned).</param>
    /// <param name="causalMask">The shared causal mask for the unfused core (not owned), or null.</param>
    /// <param name="dropoutSeed">Philox seed of this layer's flash dropout masks.</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Dtype of the parameters.</param>
    public DecoderLayer(LlamaConfig config, AttentionKind attention, double dropout, RotaryEmbedding rotary, torch.Tensor? causalMask,
        ulong dropoutSeed, torch.Device device, torch.ScalarType dtype) : base(nameof(DecoderLayer))
    {
        ArgumentNullException.ThrowIfNull(config);
        _inputNorm = new RmsNorm(config.Hidden, LlamaModel.NormEpsilon, device, dtype);
        _attention = new CausalSelfAttention(config.Hidden, config.Heads, config.KvHeads, attention, dropout, rotary, causalMask, dropoutSeed,
            device, dtype);
        _postAttentionNorm = new RmsNorm(config.Hidden, LlamaModel.NormEpsilon, device, dtype);
        _mlp = new SwiGluMlp(config.Hidden, config.Mlp, device, dtype);
        register_module("input_layernorm", _inputNorm);
        register_module("self_attn", _attention);
        register_module("post_attention_layernorm", _postAttentionNorm);
        register_module("mlp", _mlp);
    }

    /// <summary>The block's attention.</summary>
    public CausalSelfAttention SelfAttention => _attention;

    /// <summary>The block applied to <paramref name="x"/>, (batch, seqlen, hidden); same shape.</summary>
    public override torch.Tensor forward(torch.Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        using var scope = torch.NewDisposeScope();
        var attended = _attention.forward(_inputNorm.forward(x));
        var h = x.add(attended);
        attended.Dispose();
        var mlpOut = _mlp.forward(_postAttentionNorm.forward(h));
        // Out of place: in float32, the norm's upcast of h is h itself, which autograd keeps for backward.
        return h.add(mlpOut).MoveToOuterDisposeScope();
    }
}
