using TorchSharp;

namespace FlashAttn.Training.Model;

/// <summary>
/// Rotary position embedding, LLaMA's (GPT-NeoX) convention: the head dimension is split in two halves and the pair
/// (x[i], x[i + d/2]) is rotated by angle <c>position * theta^(-2i/d)</c>, i.e. <c>x * cos + rotate_half(x) * sin</c> with
/// <c>rotate_half([x1, x2]) = [-x2, x1]</c> and cos/sin repeated over both halves. (Not the interleaved GPT-J convention,
/// which rotates adjacent pairs (x[2i], x[2i+1]).)
/// </summary>
/// <remarks>
/// cos and sin are precomputed in float64 for <see cref="MaxPositions"/> positions and stored, cast to the model's dtype,
/// as (1, positions, 1, headdim) buffers, so they broadcast over flash-attn's (batch, seqlen, heads, headdim) layout: the
/// rotation is applied to q and k in that layout, before any transpose. Positions start at 0 for every sequence.
/// </remarks>
public sealed class RotaryEmbedding : torch.nn.Module<torch.Tensor, torch.Tensor>
{
    private readonly torch.Tensor _cos;
    private readonly torch.Tensor _sin;

    /// <summary>Precomputes cos and sin.</summary>
    /// <param name="headDim">Head dimension; even.</param>
    /// <param name="maxPositions">Longest sequence the tables cover.</param>
    /// <param name="theta">Rotary base (LLaMA: 10000).</param>
    /// <param name="device">Device of the tables.</param>
    /// <param name="dtype">Dtype of the tables (the dtype of q and k).</param>
    public RotaryEmbedding(int headDim, int maxPositions, double theta, torch.Device device, torch.ScalarType dtype) : base(nameof(RotaryEmbedding))
    {
        if (headDim < 2 || headDim % 2 != 0)
            throw new ArgumentException($"The head dimension ({headDim}) must be even for rotary embeddings.", nameof(headDim));
        ArgumentOutOfRangeException.ThrowIfLessThan(maxPositions, 1);
        if (!(theta > 1))
            throw new ArgumentOutOfRangeException(nameof(theta), theta, "The rotary base must be greater than 1.");
        HeadDim = headDim;
        MaxPositions = maxPositions;
        Theta = theta;

        int half = headDim / 2;
        var cos = new double[(long)maxPositions * headDim];
        var sin = new double[cos.Length];
        for (int position = 0; position < maxPositions; position++)
        {
            for (int i = 0; i < half; i++)
            {
                double angle = position * Math.Pow(theta, -2.0 * i / headDim);
                long at = (long)position * headDim + i;
                cos[at] = cos[at + half] = Math.Cos(angle);
                sin[at] = sin[at + half] = Math.Sin(angle);
            }
        }
        using (var scope = torch.NewDisposeScope())
        {
            _cos = torch.tensor(cos, [1, maxPositions, 1, headDim]).to(dtype, device).MoveToOuterDisposeScope();
            _sin = torch.tensor(sin, [1, maxPositions, 1, headDim]).to(dtype, device).MoveToOuterDisposeScope();
        }
        _cos.DetachFromDisposeScope();
        _sin.DetachFromDisposeScope();
        register_buffer("cos", _cos, persistent: false);
        register_buffer("sin", _sin, persistent: false);
    }

    /// <summary>Head dimension the tables are built for.</summary>
    public int HeadDim { get; }

    /// <summary>Positions the tables cover.</summary>
    public int MaxPositions { get; }

    /// <summary>Rotary base.</summary>
    public double Theta { get; }

    /// <summary>Rotates <paramref name="x"/>, (batch, seqlen, heads, headdim) with seqlen &lt;= <see cref="MaxPositions"/>; same shape.</summary>
    public override torch.Tensor forward(torch.Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        if (x.ndim != 4 || x.shape[3] != HeadDim)
            throw new ArgumentException($"Expected (batch, seqlen, heads, {HeadDim}); got ({string.Join(", ", x.shape)}).", nameof(x));
        long seqlen = x.shape[1];
        if (seqlen > MaxPositions)
            throw new ArgumentException($"Sequence length {seqlen} exceeds the {MaxPositions} positions of the rotary tables.", nameof(x));

        using var scope = torch.NewDisposeScope();
        var cos = _cos.narrow(1, 0, seqlen);
        var sin = _sin.narrow(1, 0, seqlen);
        long half = HeadDim / 2;
        var rotated = torch.cat([x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)], -1);
        return x.mul(cos).add_(rotated.mul_(sin)).MoveToOuterDisposeScope();
    }
}
