using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace FlashAttn.Cpu;

/// <summary>
/// The forward's common case in one pass over a score row held in four 512-bit registers: scale, row max, exp, row sum.
/// The general path (<see cref="TileMath.ToLogits"/> then one TensorPrimitives call per step) walks the 64 floats five
/// times and pays each call's dispatch; at 64 x 64 tiles those calls cost about as much as the row's share of the two
/// products. Applies to tiles with every key visible, no softcap and no ALiBi, on machines with 512-bit vectors.
/// </summary>
internal static unsafe class FusedSoftmaxRow
{
    public static bool Applies(AttentionSettings settings, float slope, bool fullyVisible) =>
        fullyVisible && slope == 0f && settings.Softcap <= 0f && Vector512.IsHardwareAccelerated && CpuTiling.KeyBlock == 4 * Vector512<float>.Count;

    /// <summary>
    /// Row <paramref name="x"/> (64 raw scores) becomes P = exp(scale x - m_new) in place, with m_new = max(m, max(scale x));
    /// returns the factor exp(m - m_new) that rescales the running output and updates <paramref name="rowMax"/> and
    /// <paramref name="rowSum"/>. A row whose max stays -inf is cleared and keeps its state (rescale 1), as in the general path.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    public static float Step(float* x, float scale, ref float rowMax, ref float rowSum)
    {
        var s = Vector512.Create(scale);
        var x0 = Vector512.Load(x) * s;
        var x1 = Vector512.Load(x + 16) * s;
        var x2 = Vector512.Load(x + 32) * s;
        var x3 = Vector512.Load(x + 48) * s;
        float previous = rowMax;
        float next = MathF.Max(previous, MaxAcross(Vector512.Max(Vector512.Max(x0, x1), Vector512.Max(x2, x3))));
        if (float.IsNegativeInfinity(next))
        {
            Vector512<float>.Zero.Store(x);
            Vector512<float>.Zero.Store(x + 16);
            Vector512<float>.Zero.Store(x + 32);
            Vector512<float>.Zero.Store(x + 48);
            return 1f;
        }
        var m = Vector512.Create(next);
        x0 = Vector512.Exp(x0 - m);
        x1 = Vector512.Exp(x1 - m);
        x2 = Vector512.Exp(x2 - m);
        x3 = Vector512.Exp(x3 - m);
        x0.Store(x);
        x1.Store(x + 16);
        x2.Store(x + 32);
        x3.Store(x + 48);
        float rescale = MathF.Exp(previous - next); // previous = -inf gives 0
        rowSum = rowSum * rescale + Vector512.Sum((x0 + x1) + (x2 + x3));
        rowMax = next;
        return rescale;
    }

    /// <summary>Max of the 16 lanes; NaN when any lane is NaN (as TensorPrimitives.Max), so a NaN score poisons its row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float MaxAcross(Vector512<float> v)
    {
        var half = Vector256.Max(v.GetLower(), v.GetUpper());
        var quarter = Vector128.Max(half.GetLower(), half.GetUpper());
        return MathF.Max(MathF.Max(quarter[0], quarter[1]), MathF.Max(quarter[2], quarter[3]));
    }
}
