using TorchSharp;
using TorchSharp.Modules;

namespace FlashAttn.Training.Model;

/// <summary>
/// A LLaMA-style decoder: token embedding, <see cref="LlamaConfig.Layers"/> pre-norm <see cref="DecoderLayer"/>s, a final
/// <see cref="RmsNorm"/> and an output head (its own matrix, or the embedding matrix when <see cref="LlamaConfig.TiedHead"/>).
/// <c>forward(tokens)</c> maps (batch, seqlen) int64 token ids to (batch, seqlen, vocab) logits in the model's dtype.
/// </summary>
/// <remarks>
/// <para><b>Initialisation</b> (LLaMA's, as in Hugging Face's <c>LlamaPreTrainedModel</c>): every matrix (embedding,
/// projections, head) drawn from N(0, 0.02^2), norm gains 1. The constructor seeds libtorch's generators with
/// <see cref="SeedTorch"/> and draws the matrices in a fixed order in float32 on the model's device, then casts them
/// to the model's dtype: the same seed gives the same weights on the same device whatever the attention core.</para>
/// <para><b>Shared tensors.</b> The rotary tables (and, for the unfused core, one (n, n) causal mask) are built once and
/// shared by every layer; the model owns and disposes them.</para>
/// </remarks>
public sealed class LlamaModel : torch.nn.Module<torch.Tensor, torch.Tensor>
{
    /// <summary>The RMSNorm epsilon (LLaMA-1's 1e-6).</summary>
    public const double NormEpsilon = 1e-6;

    /// <summary>Standard deviation of the normal initialisation of every matrix (LLaMA's initializer_range).</summary>
    public const double InitStd = 0.02;

    private readonly Embedding _embedTokens;
    private readonly ModuleList<DecoderLayer> _layers;
    private readonly RmsNorm _norm;
    private readonly Linear? _head;
    private readonly RotaryEmbedding _rotary;
    private readonly torch.Tensor? _causalMask;

    /// <summary>Builds and initialises the model on <paramref name="device"/>.</summary>
    /// <param name="config">The shape.</param>
    /// <param name="maxPositions">Longest sequence the model will see (sizes the rotary tables and the unfused causal mask).</param>
    /// <param name="attention">The attention core of every layer.</param>
    /// <param name="dropout">Attention dropout probability (training mode), in [0, 1).</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Dtype of the parameters and activations (bfloat16 for training on CUDA; float32 works on the CPU).</param>
    /// <param name="seed">Seeds the initialisation, libtorch's generators (<see cref="SeedTorch"/>: they draw the unfused and
    /// SDPA dropout masks) and the flash core's dropout masks.</param>
    public LlamaModel(LlamaConfig config, int maxPositions, AttentionKind attention, double dropout, torch.Device device, torch.ScalarType dtype,
        long seed) : base(nameof(LlamaModel))
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(device);
        Validate(config);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxPositions, 1);
        Config = config;
        MaxPositions = maxPositions;
        Attention = attention;
        Dtype = dtype;

        // A failure part-way (e.g. out of memory on the GPU) frees what was built, so the caller can try a smaller model.
        var layers = new DecoderLayer[config.Layers];
        try
        {
            SeedTorch(seed);

            _embedTokens = torch.nn.Embedding(config.VocabSize, config.Hidden, device: device, dtype: dtype);
            register_module("embed_tokens", _embedTokens);

            _rotary = new RotaryEmbedding(config.HeadDim, maxPositions, config.RopeTheta, device, dtype);
            register_module("rotary_emb", _rotary);
            if (attention == AttentionKind.Unfused)
            {
                using var scope = torch.NewDisposeScope();
                _causalMask = torch.ones([maxPositions, maxPositions], torch.ScalarType.Bool, device).triu(1).MoveToOuterDisposeScope();
                _causalMask.DetachFromDisposeScope();
                register_buffer("causal_mask", _causalMask, persistent: false);
            }

            for (int i = 0; i < layers.Length; i++)
                layers[i] = new DecoderLayer(config, attention, dropout, _rotary, _causalMask, DropoutSeed(seed, i), device, dtype);
            _layers = torch.nn.ModuleList(layers);
            register_module("layers", _layers);

            _norm = new RmsNorm(config.Hidden, NormEpsilon, device, dtype);
            register_module("norm", _norm);
            if (!config.TiedHead)
            {
                _head = torch.nn.Linear(config.Hidden, config.VocabSize, hasBias: false, device: device, dtype: dtype);
                register_module("lm_head", _head);
            }

            Initialize(device, seed);
        }
        catch
        {
            foreach (var layer in layers)
                layer?.Dispose();
            Dispose();
            throw;
        }
    }

    /// <summary>The shape.</summary>
    public LlamaConfig Config { get; }

    /// <summary>Longest sequence the model accepts.</summary>
    public int MaxPositions { get; }

    /// <summary>The attention core of every layer.</summary>
    public AttentionKind Attention { get; }

    /// <summary>Dtype of the parameters and activations.</summary>
    public torch.ScalarType Dtype { get; }

    /// <summary>The decoder layers.</summary>
    public IReadOnlyList<DecoderLayer> Layers => [.. _layers];

    /// <summary>Logits, (batch, seqlen, vocab) in the model's dtype, of <paramref name="tokens"/>, (batch, seqlen) int64 ids.</summary>
    public override torch.Tensor forward(torch.Tensor tokens)
    {
        ArgumentNullException.ThrowIfNull(tokens);
        if (tokens.ndim != 2)
            throw new ArgumentException($"tokens must be (batch, seqlen); got ({string.Join(", ", tokens.shape)}).", nameof(tokens));
        long seqlen = tokens.shape[1];
        if (seqlen > MaxPositions)
            throw new ArgumentException($"Sequence length {seqlen} exceeds the model's {MaxPositions} positions.", nameof(tokens));

        using var scope = torch.NewDisposeScope();
        var h = _embedTokens.forward(tokens); // at::embedding: its backward accumulates in fp32 for bf16 weights
        foreach (var layer in _layers)
        {
            var next = layer.forward(h);
            h.Dispose(); // a layer's input is not kept by autograd (the norm keeps its float32 copy): free it now
            h = next;
        }
        var normed = _norm.forward(h);
        h.Dispose();
        var logits = _head is null ? torch.nn.functional.linear(normed, _embedTokens.weight!) : _head.forward(normed);
        return logits.MoveToOuterDisposeScope();
    }

    /// <summary>Checks that <paramref name="config"/> describes a buildable model (positive sizes, heads dividing the width,
    /// kv heads dividing the heads, an even head dimension for the rotary embedding).</summary>
    /// <exception cref="ArgumentException">The shape is not valid.</exception>
    public static void Validate(LlamaConfig config)
    {
        ArgumentNullException.ThrowIfNull(config);
        if (config.VocabSize < 1 || config.Hidden < 1 || config.Heads < 1 || config.KvHeads < 1 || config.Mlp < 1 || config.Layers < 0)
            throw new ArgumentException($"Sizes must be positive (layers non-negative): {config}.", nameof(config));
        if (config.Hidden % config.Heads != 0)
            throw new ArgumentException($"Hidden ({config.Hidden}) must be a multiple of Heads ({config.Heads}).", nameof(config));
        if (config.Heads % config.KvHeads != 0)
            throw new ArgumentException($"KvHeads ({config.KvHeads}) must divide Heads ({config.Heads}).", nameof(config));
        if (config.HeadDim % 2 != 0)
            throw new ArgumentException($"The head dimension ({config.HeadDim}) must be even for rotary embeddings.", nameof(config));
    }

    /// <summary>
    /// Seeds libtorch's CPU generator and every CUDA generator. TorchSharp 0.107's <c>torch.manual_seed</c> seeds the CPU
    /// generator only (unlike Python's), so the CUDA generators, which draw the initial weights on the GPU and the
    /// unfused and SDPA dropout masks, are seeded separately.
    /// </summary>
    public static void SeedTorch(long seed)
    {
        torch.manual_seed(seed).Dispose();
        if (torch.cuda.is_available())
            torch.cuda.manual_seed_all(seed);
    }

    /// <summary>
    /// N(0, 0.02^2) for every matrix, ones for the norm gains, drawn in float32 in registration order: on a CPU device
    /// from a generator seeded with <paramref name="seed"/>, on CUDA from the device's default generator (seeded by
    /// <see cref="SeedTorch"/>: TorchSharp's generators are CPU-only).
    /// </summary>
    private void Initialize(torch.Device device, long seed)
    {
        using var noGrad = torch.no_grad();
        using var cpuGenerator = device.type == DeviceType.CPU ? new torch.Generator(unchecked((ulong)seed), torch.CPU) : null;
        foreach (var (_, parameter) in named_parameters())
        {
            if (parameter.ndim < 2)
            {
                parameter.fill_(1.0); // RMSNorm gains
                continue;
            }
            using var scope = torch.NewDisposeScope();
            var values = torch.empty(parameter.shape, torch.ScalarType.Float32, device).normal_(0.0, InitStd, cpuGenerator);
            parameter.copy_(values);
        }
    }

    /// <summary>A per-layer 64-bit Philox seed mixed from the model seed (SplitMix64's finaliser).</summary>
    private static ulong DropoutSeed(long seed, int layer)
    {
        ulong z = unchecked((ulong)seed + 0x9E3779B97F4A7C15UL * (ulong)(layer + 1));
        z = unchecked((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL);
        z = unchecked((z ^ (z >> 27)) * 0x94D049BB133111EBUL);
        return z ^ (z >> 31);
    }
}
