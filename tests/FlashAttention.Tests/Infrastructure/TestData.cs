using System.Globalization;
using FlashAttn.Reference;

namespace FlashAttn.Tests.Infrastructure;

/// <summary>A per-test random source: a fresh seed each run, printed in every failure message so a failure can be replayed.</summary>
internal sealed class TestRandom
{
    public int Seed { get; }
    public Random Random { get; }

    public TestRandom(int? seed = null)
    {
        Seed = seed ?? Random.Shared.Next();
        Random = new Random(Seed);
    }

    /// <summary>Standard normal samples times <paramref name="std"/>, never exactly zero.</summary>
    public float[] Normal(long count, float std = 1f)
    {
        var values = new float[count];
        for (long i = 0; i < count; i++)
        {
            double x;
            do
            {
                double u1 = 1.0 - Random.NextDouble(), u2 = Random.NextDouble();
                x = Math.Sqrt(-2 * Math.Log(u1)) * Math.Cos(2 * Math.PI * u2);
            } while (Math.Abs(x) < 1e-6);
            values[i] = (float)(x * std);
        }
        return values;
    }

    /// <summary>Uniform in [lo, hi), never exactly zero.</summary>
    public float[] Uniform(long count, float lo, float hi)
    {
        var values = new float[count];
        for (long i = 0; i < count; i++)
        {
            float x;
            do x = (float)(lo + (hi - lo) * Random.NextDouble()); while (x == 0f);
            values[i] = x;
        }
        return values;
    }

    public DropoutState NextDropoutState() => new((ulong)Random.NextInt64(), (ulong)Random.Next());

    public override string ToString() => $"seed={Seed}";
}

/// <summary>The geometry of one fixed-length test problem.</summary>
internal sealed record Problem(int Batch, int SeqlenQ, int SeqlenK, int HeadsQ, int HeadsKv, int HeadDim)
{
    public static Problem Square(int batch, int seqlen, int heads, int headDim) => new(batch, seqlen, seqlen, heads, heads, headDim);

    public ReferenceShape Shape => new(Batch, SeqlenQ, SeqlenK, HeadsQ, HeadsKv, HeadDim);
    public nint[] QLengths => [Batch, SeqlenQ, HeadsQ, HeadDim];
    public nint[] KvLengths => [Batch, SeqlenK, HeadsKv, HeadDim];
    public nint[] LseLengths => [Batch, HeadsQ, SeqlenQ];
    public int QCount => Batch * SeqlenQ * HeadsQ * HeadDim;
    public int KvCount => Batch * SeqlenK * HeadsKv * HeadDim;

    public override string ToString() =>
        $"b={Batch} sq={SeqlenQ} sk={SeqlenK} hq={HeadsQ} hkv={HeadsKv} d={HeadDim}";
}

/// <summary>Random q, k, v and dO of one problem, already rounded to the element type.</summary>
internal sealed class Inputs<T> where T : unmanaged
{
    public required Problem Problem { get; init; }
    public required TestRandom Random { get; init; }
    public required T[] Q { get; init; }
    public required T[] K { get; init; }
    public required T[] V { get; init; }
    public required T[] DOut { get; init; }

    public static Inputs<T> Create(Problem problem, TestRandom? random = null)
    {
        random ??= new TestRandom();
        return new Inputs<T>
        {
            Problem = problem,
            Random = random,
            Q = Precision<T>.FromFloats(random.Normal(problem.QCount)),
            K = Precision<T>.FromFloats(random.Normal(problem.KvCount)),
            V = Precision<T>.FromFloats(random.Normal(problem.KvCount)),
            DOut = Precision<T>.FromFloats(random.Normal(problem.QCount)),
        };
    }

    public Tensor<T> QTensor => Tensor.Create(Q, Problem.QLengths);
    public Tensor<T> KTensor => Tensor.Create(K, Problem.KvLengths);
    public Tensor<T> VTensor => Tensor.Create(V, Problem.KvLengths);
    public Tensor<T> DOutTensor => Tensor.Create(DOut, Problem.QLengths);
}

internal static class Describe
{
    public static string Options(AttentionOptions? o)
    {
        if (o is null) return "default options";
        var parts = new List<string>();
        if (o.Causal) parts.Add("causal");
        if (o.SoftmaxScale is { } s) parts.Add(string.Create(CultureInfo.InvariantCulture, $"scale={s}"));
        if (o.WindowLeft >= 0 || o.WindowRight >= 0) parts.Add($"window=({o.WindowLeft},{o.WindowRight})");
        if (o.Softcap > 0) parts.Add(string.Create(CultureInfo.InvariantCulture, $"softcap={o.Softcap}"));
        if (o.AlibiSlopes is { } a) parts.Add($"alibi({string.Join("x", a.Lengths.ToArray())})");
        if (o.DropoutProbability > 0) parts.Add(string.Create(CultureInfo.InvariantCulture, $"dropout={o.DropoutProbability} state={o.DropoutState}"));
        return parts.Count == 0 ? "no mask" : string.Join(" ", parts);
    }
}
