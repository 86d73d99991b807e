using System.Runtime.CompilerServices;

namespace FlashAttn.Dropout;

/// <summary>
/// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"): a counter-based
/// generator, so every random word is a pure function of (key, counter). The CUDA kernels implement
/// the same ten rounds; <see cref="DropoutMask"/> fixes how attention coordinates map to counters.
/// </summary>
internal static class Philox4x32
{
    private const uint MultiplierA = 0xD2511F53;
    private const uint MultiplierB = 0xCD9E8D57;
    private const uint KeyBumpA = 0x9E3779B9; // golden ratio
    private const uint KeyBumpB = 0xBB67AE85; // sqrt(3) - 1

    /// <summary>Ten rounds over counter (c0..c3) with key (k0, k1); returns four 32-bit words.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static (uint R0, uint R1, uint R2, uint R3) Generate(uint c0, uint c1, uint c2, uint c3, uint k0, uint k1)
    {
        for (int round = 0; round < 10; round++)
        {
            ulong productA = (ulong)MultiplierA * c0;
            ulong productB = (ulong)MultiplierB * c2;
            uint hiA = (uint)(productA >> 32), loA = (uint)productA;
            uint hiB = (uint)(productB >> 32), loB = (uint)productB;
            c0 = hiB ^ c1 ^ k0;
            c1 = loB;
            c2 = hiA ^ c3 ^ k1;
            c3 = loA;
            if (round < 9)
            {
                k0 += KeyBumpA;
                k1 += KeyBumpB;
            }
        }
        return (c0, c1, c2, c3);
    }
}
