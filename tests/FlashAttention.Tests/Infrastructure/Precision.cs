using System.Runtime.CompilerServices;

namespace FlashAttn.Tests.Infrastructure;

/// <summary>Conversions between the element types under test (float, Half, BFloat16) and the reference's float/double.</summary>
internal static class Precision<T> where T : unmanaged
{
    /// <summary>Unit roundoff u_P: 2^-24 (fp32), 2^-11 (fp16), 2^-8 (bf16).</summary>
    public static double UnitRoundoff { get; } =
        typeof(T) == typeof(float) ? Math.Pow(2, -24) :
        typeof(T) == typeof(Half) ? Math.Pow(2, -11) :
        typeof(T) == typeof(BFloat16) ? Math.Pow(2, -8) :
        throw new NotSupportedException(typeof(T).Name);

    /// <summary>
    /// The unit of the tolerance floor, u_P * max(1, max|ref64|): u_P itself for fp16 and bf16 (DESIGN.md's rule verbatim), and
    /// 32 u_P = 2^-19 for fp32. Why fp32 differs: there the naive baseline's own error is a few ulps, and the fused path
    /// legitimately takes different routes whose rounding is a few times larger: vectorised exp/tanh (TensorPrimitives,
    /// ~2 ulp, exp(0) = 1 + 2^-23) against scalar MathF, P = exp(x - LSE) inheriting LSE's absolute error, and backward's
    /// dP - D that the naive baseline cancels exactly on rows with one visible key. Measured under the verbatim rule, fp32
    /// cases reached 2.6x the bound (fp16/bf16 stay below 0.5x). 2^-19 is still three orders of magnitude below any
    /// semantic error (a wrong mask, scale or index moves results by 1e-3 or more).
    /// </summary>
    public static double FloorUnit { get; } = typeof(T) == typeof(float) ? 32 * UnitRoundoff : UnitRoundoff;

    public static string Name => typeof(T) == typeof(float) ? "fp32" : typeof(T) == typeof(Half) ? "fp16" : "bf16";

    /// <summary>Rounds a float to T (round to nearest even).</summary>
    public static T FromFloat(float x)
    {
        if (typeof(T) == typeof(float)) return Unsafe.As<float, T>(ref x);
        if (typeof(T) == typeof(Half))
        {
            var h = (Half)x;
            return Unsafe.As<Half, T>(ref h);
        }
        var b = (BFloat16)x;
        return Unsafe.As<BFloat16, T>(ref b);
    }

    /// <summary>Exact widening to float.</summary>
    public static float ToFloat(T x)
    {
        if (typeof(T) == typeof(float)) return Unsafe.As<T, float>(ref x);
        if (typeof(T) == typeof(Half)) return (float)Unsafe.As<T, Half>(ref x);
        return (float)Unsafe.As<T, BFloat16>(ref x);
    }

    public static T[] FromFloats(float[] values) => Array.ConvertAll(values, FromFloat);
    public static float[] ToFloats(T[] values) => Array.ConvertAll(values, ToFloat);
    public static double[] ToDoubles(T[] values) => Array.ConvertAll(values, x => (double)ToFloat(x));

    /// <summary>Rounds float results to T and widens them again (the "outputs rounded to P" step of the naive baseline).</summary>
    /// <summary>Rounds an fp32 intermediate (P, dS) to T, as an unfused computation in T stores it; null for fp32 (nothing to round).</summary>
    public static Func<float, float>? OperandRounding { get; } = typeof(T) == typeof(float) ? null : x => ToFloat(FromFloat(x));

    public static double[] RoundThrough(float[] values) => Array.ConvertAll(values, x => (double)ToFloat(FromFloat(x)));

    public static double[] Flatten(Tensor<T> tensor)
    {
        var flat = new T[tensor.FlattenedLength];
        tensor.FlattenTo(flat);
        return ToDoubles(flat);
    }
}

internal static class Flat
{
    public static double[] Of(Tensor<float> tensor)
    {
        var flat = new float[tensor.FlattenedLength];
        tensor.FlattenTo(flat);
        return Array.ConvertAll(flat, x => (double)x);
    }

    public static double[] Widen(float[] values) => Array.ConvertAll(values, x => (double)x);
}
