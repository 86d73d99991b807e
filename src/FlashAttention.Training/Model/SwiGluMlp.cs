using TorchSharp;
using TorchSharp.Modules;

namespace FlashAttn.Training.Model;

/// <summary>LLaMA's feed-forward block: <c>down(silu(gate(x)) * up(x))</c>, projections without bias.</summary>
public sealed class SwiGluMlp : torch.nn.Module<torch.Tensor, torch.Tensor>
{
    private readonly Linear _gateProj;
    private readonly Linear _upProj;
    private readonly Linear _downProj;

    /// <summary>Creates the projections (weights uninitialised: <see cref="LlamaModel"/> initialises every parameter).</summary>
    /// <param name="hidden">Model width.</param>
    /// <param name="inner">Inner width (LLaMA-7B: 11008).</param>
    /// <param name="device">Device of the parameters.</param>
    /// <param name="dtype">Dtype of the parameters.</param>
    public SwiGluMlp(int hidden, int inner, torch.Device device, torch.ScalarType dtype) : base(nameof(SwiGluMlp))
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(hidden, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(inner, 1);
        Hidden = hidden;
        Inner = inner;
        _gateProj = torch.nn.Linear(hidden, inner, hasBias: false, device: device, dtype: dtype);
        _upProj = torch.nn.Linear(hidden, inner, hasBias: false, device: device, dtype: dtype);
        _downProj = torch.nn.Linear(inner, hidden, hasBias: false, device: device, dtype: dtype);
        register_module("gate_proj", _gateProj);
        register_module("up_proj", _upProj);
        register_module("down_proj", _downProj);
    }

    /// <summary>Model width.</summary>
    public int Hidden { get; }

    /// <summary>Inner width.</summary>
    public int Inner { get; }

    /// <summary>The block applied to <paramref name="x"/>, (..., hidden); same shape.</summary>
    public override torch.Tensor forward(torch.Tensor x)
    {
        ArgumentNullException.ThrowIfNull(x);
        using var scope = torch.NewDisposeScope();
        var gated = torch.nn.functional.silu(_gateProj.forward(x)).mul(_upProj.forward(x));
        return _downProj.forward(gated).MoveToOuterDisposeScope();
    }
}
