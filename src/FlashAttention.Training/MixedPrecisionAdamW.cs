using TorchSharp;
using TorchSharp.Modules;

namespace FlashAttn.Training;

/// <summary>
/// AdamW over float32 master weights for a model whose parameters live in bfloat16 (the mixed-precision scheme of
/// <see cref="Trainer"/>): each parameter has an fp32 master copy and fp32 first and second moments; a step reads the
/// parameter's bf16 gradient as fp32, updates the master exactly as <c>torch.optim.AdamW</c> does (decoupled weight decay
/// <c>w -= lr * wd * w</c>, bias-corrected moments, <c>w -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)</c>), copies the
/// master back into the bf16 parameter and frees the gradient (<c>zero_grad(set_to_none: true)</c>).
/// </summary>
/// <remarks>
/// Why not <c>torch.optim.AdamW</c> over the masters: TorchSharp's managed AdamW runs its whole step in one dispose scope,
/// so the two parameter-sized temporaries it makes per parameter (<c>sqrt(v)</c> and its quotient) all stay alive until
/// the step ends: 8 more bytes per parameter at the step's peak, more than the attention activations this experiment
/// compares. Here each parameter's update runs in its own scope, so the transient is one parameter's fp32 gradient and
/// denominator. The fp32 gradient is not kept between steps either: memory per parameter is 2 (bf16 weight) + 2 (bf16
/// gradient) + 4 (master) + 4 + 4 (moments) = 16 bytes. Weight decay applies to matrices only (not to the norm gains).
/// </remarks>
internal sealed class MixedPrecisionAdamW : IDisposable
{
    private readonly List<Entry> _entries = [];
    private readonly double _learningRate;
    private readonly double _beta1;
    private readonly double _beta2;
    private readonly double _epsilon;
    private readonly double _weightDecay;
    private long _steps;

    private sealed record Entry(string Name, Parameter Parameter, torch.Tensor Master, torch.Tensor ExpAvg, torch.Tensor ExpAvgSq, bool Decay);

    /// <summary>Creates the masters (copies of the parameters' current values) and zeroed moments.</summary>
    public MixedPrecisionAdamW(IEnumerable<(string name, Parameter parameter)> parameters, double learningRate, double beta1 = 0.9,
        double beta2 = 0.95, double epsilon = 1e-8, double weightDecay = 0.1)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (!(learningRate >= 0)) throw new ArgumentOutOfRangeException(nameof(learningRate), learningRate, "Must be >= 0.");
        if (!(beta1 >= 0 && beta1 < 1)) throw new ArgumentOutOfRangeException(nameof(beta1), beta1, "Must be in [0, 1).");
        if (!(beta2 >= 0 && beta2 < 1)) throw new ArgumentOutOfRangeException(nameof(beta2), beta2, "Must be in [0, 1).");
        if (!(epsilon >= 0)) throw new ArgumentOutOfRangeException(nameof(epsilon), epsilon, "Must be >= 0.");
        if (!(weightDecay >= 0)) throw new ArgumentOutOfRangeException(nameof(weightDecay), weightDecay, "Must be >= 0.");
        _learningRate = learningRate;
        _beta1 = beta1;
        _beta2 = beta2;
        _epsilon = epsilon;
        _weightDecay = weightDecay;

        using var noGrad = torch.no_grad();
        try
        {
            foreach (var (name, parameter) in parameters)
            {
                using var alias = parameter.detach();
                var master = alias.to(torch.ScalarType.Float32, copy: true).DetachFromDisposeScope();
                var expAvg = torch.zeros_like(master).DetachFromDisposeScope();
                var expAvgSq = torch.zeros_like(master).DetachFromDisposeScope();
                _entries.Add(new Entry(name, parameter, master, expAvg, expAvgSq, Decay: parameter.ndim >= 2));
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Optimizer steps taken.</summary>
    public long Steps => _steps;

    /// <summary>Parameters under the optimizer.</summary>
    public int Count => _entries.Count;

    /// <summary>The fp32 master of the parameter named <paramref name="name"/> (as <c>named_parameters</c> names it).</summary>
    public torch.Tensor Master(string name) => _entries.First(e => e.Name == name).Master;

    /// <summary>
    /// One AdamW step from the parameters' current gradients (parameters without a gradient are skipped, as torch does),
    /// then the bf16 parameters get the updated masters and their gradients are freed.
    /// </summary>
    public void Step()
    {
        _steps++;
        double biasCorrection1 = 1 - Math.Pow(_beta1, _steps);
        double biasCorrection2Sqrt = Math.Sqrt(1 - Math.Pow(_beta2, _steps));
        double stepSize = _learningRate / biasCorrection1;
        double decay = 1 - _learningRate * _weightDecay;

        using var noGrad = torch.no_grad();
        foreach (var entry in _entries)
        {
            using var scope = torch.NewDisposeScope();
            var grad = entry.Parameter.grad;
            if (grad is null)
                continue;
            var grad32 = grad.to(torch.ScalarType.Float32);
            if (entry.Decay && _weightDecay > 0)
                entry.Master.mul_(decay);
            entry.ExpAvg.mul_(_beta1).add_(grad32, alpha: 1 - _beta1);
            entry.ExpAvgSq.mul_(_beta2).addcmul_(grad32, grad32, value: 1 - _beta2);
            var denominator = entry.ExpAvgSq.sqrt().div_(biasCorrection2Sqrt).add_(_epsilon);
            entry.Master.addcdiv_(entry.ExpAvg, denominator, value: -stepSize);
            entry.Parameter.copy_(entry.Master);
            entry.Parameter.grad = null;
        }
    }

    /// <summary>Frees the masters and moments (not the parameters).</summary>
    public void Dispose()
    {
        foreach (var entry in _entries)
        {
            entry.Master.Dispose();
            entry.ExpAvg.Dispose();
            entry.ExpAvgSq.Dispose();
        }
        _entries.Clear();
    }
}
