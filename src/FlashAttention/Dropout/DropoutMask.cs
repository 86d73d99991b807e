using System.Runtime.CompilerServices;

namespace FlashAttn.Dropout;

/// <summary>
/// The dropout keep-mask specification shared by every execution path (CPU and CUDA match bit for bit).
/// <para>For the attention element at query row <c>row</c> and key column <c>col</c> (positions within
/// their own sequence; for varlen, <c>batch</c> is the sequence index) of query head <c>head</c>:</para>
/// <list type="bullet">
/// <item>key = (seed &amp; 0xFFFFFFFF, seed &gt;&gt; 32)</item>
/// <item>counter = (col / 4, row, batch * headsQ + head, offset &amp; 0xFFFFFFFF)</item>
/// <item>Philox4x32-10 yields r0..r3, which belong to columns 4*(col/4) + 0..3</item>
/// <item>the element is kept iff r &gt;= floor(p * 2^32); kept values are scaled by 1 / (1 - p)</item>
/// </list>
/// Backward regenerates the mask from the same coordinates; nothing is stored.
/// </summary>
internal readonly struct DropoutMask
{
    public readonly float Probability;
    public readonly uint KeepThreshold;
    public readonly float KeepScale;
    /// <summary>The Philox key (seed) and the counter's offset word, as the CUDA kernels take them.</summary>
    public readonly uint Key0, Key1, Offset;
    private readonly int _headsQ;

    public DropoutMask(float probability, DropoutState state, int headsQ)
    {
        Probability = probability;
        KeepThreshold = ThresholdFor(probability);
        KeepScale = probability > 0f ? 1f / (1f - probability) : 1f;
        Key0 = (uint)state.Seed;
        Key1 = (uint)(state.Seed >> 32);
        Offset = (uint)state.Offset;
        _headsQ = headsQ;
    }

    public bool Enabled => Probability > 0f;

    /// <summary>floor(p * 2^32), the smallest random word that keeps an element.</summary>
    public static uint ThresholdFor(float probability) => (uint)Math.Floor(probability * 4294967296.0);

    /// <summary>Fills <paramref name="keep"/> (one entry per column from <paramref name="col0"/>) with
    /// 0 for dropped elements and the keep scale for kept ones. <paramref name="col0"/> must be a multiple of 4.</summary>
    public void FillRow(int batch, int head, int row, int col0, Span<float> keep)
    {
        uint stream = (uint)(batch * _headsQ + head);
        for (int c = 0; c < keep.Length; c += 4)
        {
            var (r0, r1, r2, r3) = Philox4x32.Generate((uint)((col0 + c) >> 2), (uint)row, stream, Offset, Key0, Key1);
            Set(keep, c, r0);
            Set(keep, c + 1, r1);
            Set(keep, c + 2, r2);
            Set(keep, c + 3, r3);
        }
    }

    /// <summary>Whether one element is kept (the scalar form of <see cref="FillRow"/>).</summary>
    public bool IsKept(int batch, int head, int row, int col)
    {
        var (r0, r1, r2, r3) = Philox4x32.Generate((uint)(col >> 2), (uint)row, (uint)(batch * _headsQ + head), Offset, Key0, Key1);
        uint r = (col & 3) switch { 0 => r0, 1 => r1, 2 => r2, _ => r3 };
        return r >= KeepThreshold;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Set(Span<float> keep, int index, uint random)
    {
        if ((uint)index < (uint)keep.Length)
            keep[index] = random >= KeepThreshold ? KeepScale : 0f;
    }
}
