using FlashAttn.Reference;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>
/// Validates the oracle itself: the float64 reference's analytic backward against central finite differences
/// of the float64 reference's forward, for the scalar loss L = sum(O * G), on tiny shapes with every feature.
/// </summary>
public sealed class ReferenceGradientCheckTests
{
    public static TheoryData<string> Cases() => ["plain", "causal", "window", "softcap", "alibi", "gqa", "dropout", "all"];

    [Theory]
    [MemberData(nameof(Cases))]
    public void AnalyticGradientsMatchFiniteDifferences(string name)
    {
        var random = new TestRandom();
        var shape = new ReferenceShape(Batch: 2, SeqlenQ: 5, SeqlenK: 7, HeadsQ: name is "gqa" or "all" ? 4 : 2,
            HeadsKv: name is "gqa" or "all" ? 2 : 2, HeadDim: 3);
        var settings = new ReferenceSettings
        {
            Scale = 0.7,
            HeadsQ = shape.HeadsQ,
            WindowRight = name is "causal" or "all" ? 0 : name == "window" ? 1 : -1,
            WindowLeft = name is "window" or "all" ? 3 : -1,
            Softcap = name is "softcap" or "all" ? 1.5 : 0,
            AlibiSlopes = name is "alibi" or "all" ? [.. random.Uniform(shape.Batch * shape.HeadsQ, 0.05f, 0.8f).Select(x => (double)x)] : null,
            DropoutProbability = name is "dropout" or "all" ? 0.3f : 0f,
            DropoutState = random.NextDropoutState(),
        };
        double[] q = Draw(random, shape.QElements), k = Draw(random, shape.KvElements), v = Draw(random, shape.KvElements);
        double[] g = Draw(random, shape.QElements);

        var analytic = ReferenceAttention.Backward(shape, settings, q, k, v, g);
        string context = $"[{name} {random}]";
        Compare("dQ", q, analytic.DQ, () => Loss(shape, settings, q, k, v, g), context);
        Compare("dK", k, analytic.DK, () => Loss(shape, settings, q, k, v, g), context);
        Compare("dV", v, analytic.DV, () => Loss(shape, settings, q, k, v, g), context);
    }

    private static double[] Draw(TestRandom random, int count) => [.. random.Normal(count).Select(x => (double)x)];

    private static double Loss(ReferenceShape shape, ReferenceSettings settings, double[] q, double[] k, double[] v, double[] g)
    {
        var o = ReferenceAttention.Forward(shape, settings, q, k, v).Output;
        double loss = 0;
        for (int i = 0; i < o.Length; i++) loss += o[i] * g[i];
        return loss;
    }

    /// <summary>Perturbs each entry of <paramref name="x"/> in place by +-h and compares (L+ - L-) / 2h with the analytic gradient.</summary>
    private static void Compare(string what, double[] x, double[] gradient, Func<double> loss, string context)
    {
        const double h = 1e-5;
        for (int i = 0; i < x.Length; i++)
        {
            double saved = x[i];
            x[i] = saved + h;
            double plus = loss();
            x[i] = saved - h;
            double minus = loss();
            x[i] = saved;
            double numeric = (plus - minus) / (2 * h);
            double error = Math.Abs(numeric - gradient[i]);
            Assert.True(error <= 1e-6 * Math.Max(1, Math.Abs(numeric)),
                $"{what}[{i}]: analytic {gradient[i]:R}, finite difference {numeric:R}, error {error:G3}. {context}");
        }
    }
}
