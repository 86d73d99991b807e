using System.Runtime.CompilerServices;

namespace FlashAttn.Cli;

/// <summary>The element types the library takes, by their flash-attn names.</summary>
internal enum ElementType
{
    Fp32,
    Fp16,
    Bf16,
}

internal static class ElementTypes
{
    public static readonly string[] Names = ["fp32", "fp16", "bf16"];

    public static string Name(this ElementType type) => Names[(int)type];

    public static ElementType Parse(string name) => Array.IndexOf(Names, name.ToLowerInvariant()) is >= 0 and var i
        ? (ElementType)i
        : throw new CliException($"unknown dtype '{name}'; use one of {string.Join(", ", Names)}.");

    /// <summary>Unit roundoff: 2^-24 (fp32), 2^-11 (fp16), 2^-8 (bf16).</summary>
    public static double UnitRoundoff(this ElementType type) => type switch
    {
        ElementType.Fp32 => Math.Pow(2, -24),
        ElementType.Fp16 => Math.Pow(2, -11),
        _ => Math.Pow(2, -8),
    };

    /// <summary>
    /// The unit of the check's tolerance floor, u * max(1, max|ref64|): u_P for fp16 and bf16 (DESIGN.md's rule verbatim)
    /// and 32 u_P = 2^-19 for fp32, the same widening as the test suite (tests/.../Infrastructure/Precision.cs explains it:
    /// in fp32 the naive baseline's error is a few ulps and the fused path's legitimately different rounding, e.g. backward's
    /// dP - D on rows with one visible key, exceeds twice that; measured here too, 7 of 31 seeds failed fp32 backward by up to 1.3x).
    /// </summary>
    public static double ToleranceFloorUnit(this ElementType type) => type == ElementType.Fp32 ? 32 * type.UnitRoundoff() : type.UnitRoundoff();

    /// <summary>Rounds a value to the precision of the type (and back to double).</summary>
    public static double Round(this ElementType type, double value) => type switch
    {
        ElementType.Fp32 => (float)value,
        ElementType.Fp16 => (double)(Half)value,
        _ => (double)(BFloat16)value,
    };

    public static T FromDouble<T>(double value) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) { float f = (float)value; return Unsafe.As<float, T>(ref f); }
        if (typeof(T) == typeof(Half)) { Half h = (Half)value; return Unsafe.As<Half, T>(ref h); }
        if (typeof(T) == typeof(BFloat16)) { BFloat16 b = (BFloat16)value; return Unsafe.As<BFloat16, T>(ref b); }
        throw new NotSupportedException($"element type {typeof(T).Name}");
    }

    public static double ToDouble<T>(T value) where T : unmanaged
    {
        if (typeof(T) == typeof(float)) return Unsafe.As<T, float>(ref value);
        if (typeof(T) == typeof(Half)) return (double)Unsafe.As<T, Half>(ref value);
        if (typeof(T) == typeof(BFloat16)) return (double)Unsafe.As<T, BFloat16>(ref value);
        throw new NotSupportedException($"element type {typeof(T).Name}");
    }
}
