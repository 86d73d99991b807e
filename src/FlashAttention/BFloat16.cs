using System.Globalization;
using System.Runtime.InteropServices;

namespace FlashAttn;

/// <summary>
/// The bfloat16 format (1 sign, 8 exponent, 7 mantissa bits): the upper half of an IEEE float32.
/// .NET has no such type; conversions from float round to nearest, ties to even, and keep NaN a NaN.
/// </summary>
[StructLayout(LayoutKind.Sequential, Size = 2)]
public readonly struct BFloat16 : IEquatable<BFloat16>, IComparable<BFloat16>, IFormattable
{
    /// <summary>The raw 16 bits.</summary>
    public ushort Bits { get; }

    private BFloat16(ushort bits) => Bits = bits;

    /// <summary>Builds a value from its raw 16 bits.</summary>
    public static BFloat16 FromBits(ushort bits) => new(bits);

    /// <summary>Unit roundoff of the format, 2^-8.</summary>
    public const float UnitRoundoff = 1f / 256f;

    /// <summary>Converts with round-to-nearest-even; NaN stays a (quiet) NaN.</summary>
    public static explicit operator BFloat16(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        if (float.IsNaN(value))
            return new BFloat16((ushort)((bits >> 16) | 0x0040)); // set the quiet bit so the mantissa cannot round to zero (Inf)
        uint roundingBias = 0x7FFFu + ((bits >> 16) & 1u);
        return new BFloat16((ushort)((bits + roundingBias) >> 16));
    }

    /// <summary>Converts through float (double to float, then to bfloat16).</summary>
    public static explicit operator BFloat16(double value) => (BFloat16)(float)value;

    /// <summary>Exact widening to float.</summary>
    public static explicit operator float(BFloat16 value) => BitConverter.UInt32BitsToSingle((uint)value.Bits << 16);

    /// <summary>Exact widening to double.</summary>
    public static explicit operator double(BFloat16 value) => (float)value;

    /// <summary>True for NaN.</summary>
    public static bool IsNaN(BFloat16 value) => (value.Bits & 0x7FFF) > 0x7F80;

    /// <inheritdoc />
    public bool Equals(BFloat16 other) => ((float)this).Equals((float)other);

    /// <inheritdoc />
    public override bool Equals(object? obj) => obj is BFloat16 other && Equals(other);

    /// <inheritdoc />
    public override int GetHashCode() => ((float)this).GetHashCode();

    /// <inheritdoc />
    public int CompareTo(BFloat16 other) => ((float)this).CompareTo((float)other);

    /// <summary>Numeric equality (so +0 == -0 and NaN != NaN).</summary>
    public static bool operator ==(BFloat16 left, BFloat16 right) => (float)left == (float)right;

    /// <summary>Numeric inequality.</summary>
    public static bool operator !=(BFloat16 left, BFloat16 right) => (float)left != (float)right;

    /// <inheritdoc />
    public override string ToString() => ((float)this).ToString(CultureInfo.InvariantCulture);

    /// <inheritdoc />
    public string ToString(string? format, IFormatProvider? formatProvider) => ((float)this).ToString(format, formatProvider);
}
