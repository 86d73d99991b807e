using System.Numerics.Tensors;

namespace FlashAttn.Cli.Bench;

/// <summary>
/// Builds the timed closure of one row: inputs allocated and filled once (uniform in [-1, 1)), outputs preallocated
/// where the API allows, so the closure is the operation itself. "bwd" runs forward once up front and times backward.
/// </summary>
internal static class Workloads
{
    public static Action Ours(IExecutionPath path, BenchCase c, CancellationToken ct) => c.DType switch
    {
        ElementType.Fp32 => Ours<float>(path, c, ct),
        ElementType.Fp16 => Ours<Half>(path, c, ct),
        _ => Ours<BFloat16>(path, c, ct),
    };

    private static Action Ours<T>(IExecutionPath path, BenchCase c, CancellationToken ct) where T : unmanaged
    {
        nint[] shape = [c.Batch, c.Seqlen, c.Heads, c.HeadDim];
        int count = c.Batch * c.Seqlen * c.Heads * c.HeadDim;
        var rng = new Random(42);
        Tensor<T> q = Random<T>(rng, count, shape), k = Random<T>(rng, count, shape), v = Random<T>(rng, count, shape), dOut = Random<T>(rng, count, shape);
        var output = Tensor.CreateFromShape<T>(shape);
        var lse = Tensor.CreateFromShape<float>([c.Batch, c.Heads, c.Seqlen]);
        var options = new AttentionOptions { Causal = c.Causal };
        void Forward() => path.ForwardInto(q, k, v, output, lse, options, ct);
        void Backward() => path.Backward(dOut, q, k, v, output, lse, options, null, ct);
        switch (c.Mode)
        {
            case "fwd": return Forward;
            case "bwd": Forward(); return Backward;
            default: return () => { Forward(); Backward(); };
        }
    }

    /// <summary>The unfused fp32 baseline; inputs are rounded to the row's dtype but computed in fp32.</summary>
    public static Action Naive(BenchCase c, CancellationToken ct)
    {
        int count = c.Batch * c.Seqlen * c.Heads * c.HeadDim;
        var rng = new Random(42);
        float[] q = Floats(rng, count, c.DType), k = Floats(rng, count, c.DType), v = Floats(rng, count, c.DType), dOut = Floats(rng, count, c.DType);
        var naive = new NaiveCpuAttention(c.Batch, c.Seqlen, c.Heads, c.HeadDim, c.Causal);
        switch (c.Mode)
        {
            case "fwd": return () => naive.Forward(q, k, v, ct);
            case "bwd":
                naive.Forward(q, k, v, ct);
                return () => naive.Backward(dOut, q, k, v, ct);
            default:
                return () =>
                {
                    naive.Forward(q, k, v, ct);
                    naive.Backward(dOut, q, k, v, ct);
                };
        }
    }

    private static Tensor<T> Random<T>(Random rng, int count, nint[] shape) where T : unmanaged
    {
        var data = new T[count];
        for (int i = 0; i < count; i++) data[i] = ElementTypes.FromDouble<T>(2 * rng.NextDouble() - 1);
        return Tensor.Create(data, shape);
    }

    private static float[] Floats(Random rng, int count, ElementType type)
    {
        var data = new float[count];
        for (int i = 0; i < count; i++) data[i] = (float)type.Round(2 * rng.NextDouble() - 1);
        return data;
    }
}
