using System.Numerics.Tensors;
using FlashAttn.Reference;

namespace FlashAttn.Cli.Check;

/// <summary>
/// Runs one case on one execution path: fresh random inputs rounded to the element type, the path's forward and
/// backward (backward fed with the path's own output and LSE, as a user would), then each output against the
/// library's float64 oracle (<see cref="ReferenceAttention"/>) with the naive baseline of the test suite: the same
/// reference in fp32 arithmetic on the rounded inputs, outputs rounded to the element type, and backward's
/// D = rowsum(dO * O) read from that rounded output, as the fused kernels read their stored output.
/// </summary>
internal static class CheckRunner
{
    public static IReadOnlyList<CheckResult> Run(IExecutionPath path, CheckCase c, Random rng, CancellationToken ct) => c.DType switch
    {
        ElementType.Fp32 => Run<float>(path, c, rng, ct),
        ElementType.Fp16 => Run<Half>(path, c, rng, ct),
        _ => Run<BFloat16>(path, c, rng, ct),
    };

    private static CheckResult[] Run<T>(IExecutionPath path, CheckCase c, Random rng, CancellationToken ct) where T : unmanaged
    {
        var shape = c.Shape;
        var type = c.DType;
        double[] q = Inputs(rng, shape.QElements, type), k = Inputs(rng, shape.KvElements, type), v = Inputs(rng, shape.KvElements, type);
        double[] dOut = Inputs(rng, shape.QElements, type);
        nint[] qShape = [shape.Batch, shape.SeqlenQ, shape.HeadsQ, shape.HeadDim], kShape = [shape.Batch, shape.SeqlenK, shape.HeadsKv, shape.HeadDim];
        Tensor<T> qt = Create<T>(q, qShape), kt = Create<T>(k, kShape), vt = Create<T>(v, kShape), dOutT = Create<T>(dOut, qShape);
        double floor = type.ToleranceFloorUnit();

        AttentionResult<T> result;
        try
        {
            result = path.Forward(qt, kt, vt, c.Options, ct);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            return [new(c, "fwd", path.Name, [], ex.Message), new(c, "bwd", path.Name, [], "not run: forward failed")];
        }
        var settings = ReferenceSettings.From(c.Options, shape.HeadDim, shape.Batch, shape.HeadsQ, result.DropoutState);
        float[] qf = Floats(q), kf = Floats(k), vf = Floats(v);
        var ref64 = ReferenceAttention.Backward(shape, settings, q, k, v, dOut);
        Func<float, float>? roundOperand = type == ElementType.Fp32 ? null : x => (float)type.Round(x); // P and dS as a 16-bit unfused run stores them
        var naiveForward = ReferenceAttention.Forward(shape, settings, qf, kf, vf, roundOperand);
        // The naive backward's D = rowsum(dO * O) reads the O under test, the one the backward is given: the backward is held
        // to the unfused computation on the same inputs, O to the rule by the forward check (TEST-MATRIX.md, "Backward on the same O").
        float[] storedOutput = Array.ConvertAll(Doubles(result.Output), x => (float)x);
        var forward = new CheckResult(c, "fwd", path.Name,
        [
            TensorCheck.Compare("O", Doubles(result.Output), ref64.Forward.Output, RoundThrough(naiveForward.Output, type), floor),
            TensorCheck.Compare("LSE", Doubles(result.LogSumExp), ref64.Forward.LogSumExp, Widen(naiveForward.LogSumExp), floor),
        ]);

        CheckResult backward;
        try
        {
            var grads = path.Backward(dOutT, qt, kt, vt, result.Output, result.LogSumExp, c.Options, result.DropoutState, ct);
            var naive = ReferenceAttention.Backward(shape, settings, qf, kf, vf, Floats(dOut), storedOutput, roundOperand, probabilitiesFromLse: true);
            backward = new(c, "bwd", path.Name,
            [
                TensorCheck.Compare("dQ", Doubles(grads.DQ), ref64.DQ, RoundThrough(naive.DQ, type), floor),
                TensorCheck.Compare("dK", Doubles(grads.DK), ref64.DK, RoundThrough(naive.DK, type), floor),
                TensorCheck.Compare("dV", Doubles(grads.DV), ref64.DV, RoundThrough(naive.DV, type), floor),
            ]);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            backward = new(c, "bwd", path.Name, [], ex.Message);
        }
        return [forward, backward];
    }

    /// <summary>Standard normal values, rounded to the element type so every implementation sees the same inputs.</summary>
    private static double[] Inputs(Random rng, int count, ElementType type)
    {
        var values = new double[count];
        for (int i = 0; i < count; i++)
        {
            double u1 = 1.0 - rng.NextDouble(), u2 = rng.NextDouble();
            values[i] = type.Round(Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2));
        }
        return values;
    }

    internal static Tensor<T> Create<T>(double[] values, nint[] shape) where T : unmanaged =>
        Tensor.Create(Array.ConvertAll(values, ElementTypes.FromDouble<T>), shape);

    internal static double[] Doubles<T>(Tensor<T> tensor) where T : unmanaged
    {
        var flat = new T[tensor.FlattenedLength];
        tensor.FlattenTo(flat);
        return Array.ConvertAll(flat, ElementTypes.ToDouble);
    }

    private static float[] Floats(double[] values) => Array.ConvertAll(values, x => (float)x);

    private static double[] Widen(float[] values) => Array.ConvertAll(values, x => (double)x);

    /// <summary>The "outputs rounded to P" step of the naive baseline.</summary>
    private static double[] RoundThrough(float[] values, ElementType type) => Array.ConvertAll(values, x => type.Round(x));
}
