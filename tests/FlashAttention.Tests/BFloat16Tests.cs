namespace FlashAttn.Tests;

/// <summary>BFloat16 conversions: round to nearest, ties to even, in both directions and signs; NaN, infinities, overflow, zeros.</summary>
public sealed class BFloat16Tests
{
    [Theory]
    [InlineData(0x3F800000u, 0x3F80)] // 1
    [InlineData(0x3F808000u, 0x3F80)] // tie between 0x3F80 (even) and 0x3F81: down
    [InlineData(0x3F818000u, 0x3F82)] // tie between 0x3F81 and 0x3F82 (even): up
    [InlineData(0x3F808001u, 0x3F81)] // just above the tie
    [InlineData(0x3F807FFFu, 0x3F80)] // just below the tie
    [InlineData(0xBF808000u, 0xBF80)] // negative tie: down in magnitude
    [InlineData(0xBF818000u, 0xBF82)] // negative tie: up in magnitude
    [InlineData(0xBF81FFFFu, 0xBF82)]
    [InlineData(0x3FFFFFFFu, 0x4000)] // carry into the exponent
    [InlineData(0x7F800000u, 0x7F80)] // +inf
    [InlineData(0xFF800000u, 0xFF80)] // -inf
    [InlineData(0x7F7FFFFFu, 0x7F80)] // float max rounds to +inf
    [InlineData(0xFF7FFFFFu, 0xFF80)] // -float max rounds to -inf
    [InlineData(0x7F7F8000u, 0x7F80)] // tie above bf16 max (odd): to even = inf
    [InlineData(0x7F7F7FFFu, 0x7F7F)] // below the tie: bf16 max stays finite
    [InlineData(0x00000000u, 0x0000)] // +0
    [InlineData(0x80000000u, 0x8000)] // -0 keeps its sign
    [InlineData(0x00008000u, 0x0000)] // subnormal tie to even (down)
    [InlineData(0x00018000u, 0x0002)] // subnormal tie to even (up)
    [InlineData(0x80018000u, 0x8002)]
    public void RoundsToNearestEven(uint floatBits, int expectedBits)
    {
        var value = (BFloat16)BitConverter.UInt32BitsToSingle(floatBits);
        Assert.Equal((ushort)expectedBits, value.Bits);
    }

    [Theory]
    [InlineData(0x7FC00000u)] // quiet NaN
    [InlineData(0x7F800001u)] // signalling NaN whose payload sits in the bits that are cut off
    [InlineData(0xFF800001u)] // negative such NaN
    [InlineData(0x7FFFFFFFu)] // all-ones payload: must not carry into the sign
    [InlineData(0xFFFFFFFFu)]
    public void NaNStaysNaN(uint floatBits)
    {
        var value = (BFloat16)BitConverter.UInt32BitsToSingle(floatBits);
        Assert.True(BFloat16.IsNaN(value), $"0x{floatBits:X8} became 0x{value.Bits:X4}");
        Assert.True(float.IsNaN((float)value));
        Assert.Equal(floatBits >> 31, (uint)value.Bits >> 15); // sign kept
    }

    [Fact]
    public void WideningIsExact()
    {
        for (int bits = 0; bits <= 0xFFFF; bits++)
        {
            var value = BFloat16.FromBits((ushort)bits);
            float widened = (float)value;
            Assert.Equal((uint)bits << 16, BitConverter.SingleToUInt32Bits(widened));
            if (!float.IsNaN(widened))
                Assert.Equal((ushort)bits, ((BFloat16)widened).Bits); // round trip
        }
    }

    [Fact]
    public void MatchesADoubleModelOfRoundToNearestEven()
    {
        var random = new Random();
        for (int trial = 0; trial < 20000; trial++)
        {
            float x = BitConverter.UInt32BitsToSingle((uint)random.NextInt64(0, 1L << 32));
            if (float.IsNaN(x) || float.IsInfinity(x)) continue;
            var rounded = (float)(BFloat16)x;
            // The two bf16 neighbours of x, and the rule: nearer one wins, ties go to the even mantissa.
            uint bits = BitConverter.SingleToUInt32Bits(x);
            float down = BitConverter.UInt32BitsToSingle(bits & 0xFFFF0000u);
            float up = BitConverter.UInt32BitsToSingle((bits & 0xFFFF0000u) + 0x10000u);
            // Past the largest finite bf16 the upper neighbour is infinity; for rounding it stands at 2^128 (the next binade).
            double upValue = float.IsInfinity(up) ? Math.CopySign(Math.Pow(2, 128), up) : up;
            double dDown = Math.Abs((double)x - down), dUp = Math.Abs(upValue - x);
            float expected = dDown < dUp ? down : dUp < dDown ? up : (((bits >> 16) & 1) == 0 ? down : up);
            Assert.True(BitConverter.SingleToUInt32Bits(expected) == BitConverter.SingleToUInt32Bits(rounded),
                $"x = {x:R} (0x{bits:X8}): got {rounded:R}, expected {expected:R}");
        }
    }

    [Fact]
    public void EqualityIsNumeric()
    {
        Assert.True(BFloat16.FromBits(0x0000) == BFloat16.FromBits(0x8000));
        Assert.False(BFloat16.FromBits(0x7FC0) == BFloat16.FromBits(0x7FC0));
        Assert.Equal(1f / 256f, BFloat16.UnitRoundoff);
    }
}
