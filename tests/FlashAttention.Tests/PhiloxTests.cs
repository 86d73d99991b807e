using FlashAttn.Dropout;

namespace FlashAttn.Tests;

/// <summary>Philox4x32-10 against Random123's known answers, and the dropout mask against the mapping DESIGN.md specifies.</summary>
public sealed class PhiloxTests
{
    [Theory]
    [InlineData(0u, 0u, 0u, 0u, 0u, 0u, 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u)]
    [InlineData(0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu, 0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu)]
    [InlineData(0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u, 0xa4093822u, 0x299f31d0u, 0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u)]
    public void KnownAnswers(uint c0, uint c1, uint c2, uint c3, uint k0, uint k1, uint r0, uint r1, uint r2, uint r3)
    {
        var (a, b, c, d) = Philox4x32.Generate(c0, c1, c2, c3, k0, k1);
        Assert.Equal((r0, r1, r2, r3), (a, b, c, d));
    }

    [Fact]
    public void MaskFollowsTheSpecifiedCounterMapping()
    {
        // key = (seed lo, seed hi); counter = (col / 4, row, batch * heads_q + head, offset lo); word col % 4; kept iff r >= floor(p 2^32).
        var random = new Random();
        ulong seed = (ulong)random.NextInt64();
        ulong offset = (ulong)random.NextInt64();
        const int heads = 5;
        foreach (float p in new[] { 0.1f, 0.5f, 0.9f })
        {
            var mask = new DropoutMask(p, new DropoutState(seed, offset), heads);
            uint threshold = (uint)Math.Floor(p * 4294967296.0);
            for (int trial = 0; trial < 2000; trial++)
            {
                int b = random.Next(4), h = random.Next(heads), row = random.Next(5000), col = random.Next(5000);
                var words = Philox4x32.Generate((uint)(col / 4), (uint)row, (uint)(b * heads + h), (uint)offset, (uint)seed, (uint)(seed >> 32));
                uint word = (col % 4) switch { 0 => words.R0, 1 => words.R1, 2 => words.R2, _ => words.R3 };
                Assert.True(mask.IsKept(b, h, row, col) == word >= threshold,
                    $"IsKept({b}, {h}, {row}, {col}) disagrees with the spec; seed {seed}, offset {offset}, p {p}");
            }
        }
    }

    [Fact]
    public void FillRowAgreesWithIsKept()
    {
        var random = new Random();
        var state = new DropoutState((ulong)random.NextInt64(), (ulong)random.Next());
        var mask = new DropoutMask(0.3f, state, 3);
        var keep = new float[70];
        for (int row = 0; row < 20; row++)
        {
            mask.FillRow(1, 2, row, 64, keep);
            for (int c = 0; c < keep.Length; c++)
            {
                float expected = mask.IsKept(1, 2, row, 64 + c) ? 1f / (1f - 0.3f) : 0f;
                Assert.True(expected == keep[c], $"row {row} col {64 + c}: FillRow {keep[c]}, IsKept says {expected}; {state}");
            }
        }
    }
}
