using TorchSharp;
using TorchSharp.Modules;

namespace FlashAttn.Training.Model;

/// <summary>
/// Root-mean-square layer norm (LLaMA's <c>LlamaRMSNorm</c>): <c>weight * (x / sqrt(mean(x^2) + eps))</c> over the last
/// dimension, the statistics computed in float32 and the normalised value cast back to the input's dtype before the gain.
/// </summary>
public sealed class RmsNorm : torch.nn.Module<torch.Tensor, torch.Tensor>
{
    private readonly Parameter _weight;

    /// <summary>Creates the norm with a gain of ones.</summary>
    /// <param name="dimension">Width of the normalised (last) dimension.</param>
    /// <param name="epsilon">Added to the mean square (LLaMA-1: 1e-6).</param>
    /// <param name="device">Device of the gain.</param>
    /// <param name="dtype">Dtype of the gain (the model's dtype).</param>
    public RmsNorm(long dimension, double epsilon, torch.Device device, torch.ScalarType dtype) : base(nameof(RmsNorm))
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(dimension, 1);
        Dimension = dimension;
        Epsilon = epsilon;
        _weight = new Parameter(torch.ones(dimension, dtype, device).DetachFromDisposeScope(), requires_grad: true);
        register_parameter("weight", _weight);
    }

    /// <summary>Width of the normalised dimension.</summary>
    public long Dimension { get; }

    /// <summary>The epsilon added to the mean square.</summary>
    public double Epsilon { get; }

    /// <summary>The gain, (dimension).</summary>
    public Parameter Weight => _weight;

    /// <summary>Normalises <paramref name="x"/> (..., dimension) over its last dimension; same shape and dtype.</summary>
    public override torch.Tensor forward(torch.Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        using var scope = torch.NewDisposeScope();
        var x32 = x.to(torch.ScalarType.Float32);
        var meanSquare = x32.square().mean([-1L], keepdim: true);
        var inverseRms = meanSquare.add(Epsilon).rsqrt();
        var normalized32 = x32.mul(inverseRms);
        var normalized = normalized32.to(x.dtype);
        normalized32.Dispose(); // not kept by autograd: free it before the gain's product is allocated
        return normalized.mul(_weight).MoveToOuterDisposeScope();
    }
}
