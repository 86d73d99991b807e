using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>
/// Masks whose edges fall exactly on, or one off, the tile edges of the CPU path (64 x 64 blocks) and multiples of the
/// GPU tile sizes, so block skipping and the fully-visible-tile shortcut are exercised at their boundaries, forward and backward.
/// </summary>
public sealed class BlockEdgeTests
{
    public static TheoryData<int, int, int, int, bool> Cases()
    {
        var data = new TheoryData<int, int, int, int, bool>();
        // Causal with seqlen_k - seqlen_q = 1, 62, 63, 64, 65 (the diagonal's offset against the tile grid).
        foreach (var (sq, sk) in new[] { (129, 130), (66, 128), (65, 128), (64, 128), (63, 128), (130, 129) })
            data.Add(sq, sk, -1, -1, true);
        // Windows of width around a tile, both sides, square and skewed.
        foreach (var (left, right) in new[] { (0, 1), (1, 0), (1, 1), (62, 63), (63, 62), (64, 64), (65, 1), (1, 65), (127, 0), (-1, 62), (63, -1) })
            data.Add(130, 130, left, right, false);
        data.Add(100, 190, 63, 1, false);
        data.Add(190, 100, 1, 63, false);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ForwardAndBackwardAtTileEdges(int seqlenQ, int seqlenK, int left, int right, bool causal) =>
        AttentionCheck.Backward<float>(new Problem(1, seqlenQ, seqlenK, 2, 1, 16),
            new AttentionOptions { WindowLeft = left, WindowRight = right, Causal = causal });
}
