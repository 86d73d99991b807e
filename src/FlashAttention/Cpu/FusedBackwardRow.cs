using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace FlashAttn.Cpu;

/// <summary>
/// Backward's element-wise steps on one 64-float row in 512-bit registers, one pass each instead of two to four
/// TensorPrimitives calls (the same reason as <see cref="FusedSoftmaxRow"/>): recomputing P from the scores and the LSE,
/// and dS from dP. For tiles with every key visible, no softcap and no ALiBi (and, for dS, no dropout).
/// </summary>
internal static unsafe class FusedBackwardRow
{
    /// <summary>Whether P can be recomputed here: the logits are the scaled scores, nothing masked.</summary>
    public static bool AppliesToP(AttentionSettings settings, float slope, bool fullyVisible) =>
        FusedSoftmaxRow.Applies(settings, slope, fullyVisible);

    /// <summary>Whether dS = P (dP - D) scale holds as is: no dropout mask and no softcap derivative to apply.</summary>
    public static bool AppliesToDs(AttentionSettings settings) =>
        !settings.Dropout.Enabled && settings.Softcap <= 0f && Vector512.IsHardwareAccelerated && CpuTiling.KeyBlock == 4 * Vector512<float>.Count;

    /// <summary>Row <paramref name="x"/> of raw scores becomes P = exp(scale x - lse) (0 everywhere when lse = +inf).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    public static void Probabilities(float* x, float scale, float lse)
    {
        var s = Vector512.Create(scale);
        var l = Vector512.Create(lse);
        Vector512.Exp(Vector512.Load(x) * s - l).Store(x);
        Vector512.Exp(Vector512.Load(x + 16) * s - l).Store(x + 16);
        Vector512.Exp(Vector512.Load(x + 32) * s - l).Store(x + 32);
        Vector512.Exp(Vector512.Load(x + 48) * s - l).Store(x + 48);
    }

    /// <summary>Row <paramref name="dp"/> of dP becomes dS = P (dP - delta) scale, in place.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    public static void ScoreGradient(float* dp, float* p, float delta, float scale)
    {
        var d = Vector512.Create(delta);
        var s = Vector512.Create(scale);
        ((Vector512.Load(dp) - d) * Vector512.Load(p) * s).Store(dp);
        ((Vector512.Load(dp + 16) - d) * Vector512.Load(p + 16) * s).Store(dp + 16);
        ((Vector512.Load(dp + 32) - d) * Vector512.Load(p + 32) * s).Store(dp + 32);
        ((Vector512.Load(dp + 48) - d) * Vector512.Load(p + 48) * s).Store(dp + 48);
    }
}
