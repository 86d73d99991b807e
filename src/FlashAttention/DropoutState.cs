using System.Security.Cryptography;

namespace FlashAttn;

/// <summary>
/// The dropout random-number state of one attention call: the Philox seed and offset that, with the
/// element's coordinates, decide every keep bit (flash-attn's <c>rng_state</c>). Pass it to backward.
/// </summary>
/// <param name="Seed">The 64-bit Philox key.</param>
/// <param name="Offset">The counter offset (its low 32 bits enter the counter).</param>
public readonly record struct DropoutState(ulong Seed, ulong Offset)
{
    private static readonly ulong ProcessSeed = BitConverter.ToUInt64(RandomNumberGenerator.GetBytes(8));
    private static long _nextOffset = -1;

    /// <summary>The process-wide generator: a seed drawn once per process, the offset advanced by one per call.</summary>
    public static DropoutState Next() => new(ProcessSeed, (ulong)Interlocked.Increment(ref _nextOffset));
}
