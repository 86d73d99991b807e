using FlashAttn.Cuda;

namespace FlashAttn.Tests.Cuda;

/// <summary>Shape arithmetic behind CudaTensor: host-only, runs everywhere.</summary>
[Trait("Category", "Cuda")]
public sealed class TensorLayoutTests
{
    [Fact]
    public void RowMajorStridesAndExtent()
    {
        Assert.Equal([12, 4, 1], TensorLayout.RowMajorStrides([2, 3, 4]));
        Assert.Equal(24, TensorLayout.Extent([2, 3, 4], [12, 4, 1]));
        Assert.Equal(0, TensorLayout.Extent([2, 0, 4], [0, 4, 1]));
        Assert.Equal(1 + 1 * 40 + 2 * 12 + 3 * 2, TensorLayout.Extent([2, 3, 4], [40, 12, 2]));
        Assert.Equal(1, TensorLayout.Extent([5], [0])); // broadcast
    }

    [Fact]
    public void RowMajorDetectionIgnoresUnitDimensions()
    {
        Assert.True(TensorLayout.IsRowMajor([2, 1, 4], [4, 999, 1]));
        Assert.False(TensorLayout.IsRowMajor([2, 3], [1, 2]));
        Assert.False(TensorLayout.IsRowMajor([2, 3], [4, 1]));
        Assert.True(TensorLayout.IsRowMajor([0, 3], [7, 7]));
    }

    [Fact]
    public void GatherAndScatterFollowTheStrides()
    {
        // A (2, 3, 4) view with gaps: element [i, j, k] lives at 40 i + 8 j + 2 k.
        nint[] lengths = [2, 3, 4], strides = [40, 8, 2];
        long extent = TensorLayout.Extent(lengths, strides);
        var memory = Enumerable.Range(0, (int)extent).Select(x => (float)x + 0.5f).ToArray();
        var dense = new float[24];
        TensorLayout.Gather<float>(memory, lengths, strides, dense);
        int n = 0;
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++)
                for (int k = 0; k < 4; k++)
                    Assert.Equal(memory[40 * i + 8 * j + 2 * k], dense[n++]);

        var target = Enumerable.Repeat(-1f, (int)extent).ToArray();
        TensorLayout.Scatter<float>(dense, lengths, strides, target);
        for (int x = 0; x < extent; x++)
        {
            bool inView = x % 2 == 0 && x % 40 / 8 < 3 && x % 8 / 2 < 4;
            Assert.Equal(inView ? memory[x] : -1f, target[x]);
        }
    }

    [Fact]
    public void ValidationRejectsBadLayouts()
    {
        Assert.Throws<ArgumentException>(() => TensorLayout.Validate([], [], "lengths", "strides"));
        Assert.Throws<ArgumentException>(() => TensorLayout.Validate([2, 3], [1], "lengths", "strides"));
        Assert.Throws<ArgumentOutOfRangeException>(() => TensorLayout.Validate([-1], [1], "lengths", "strides"));
        Assert.Throws<ArgumentOutOfRangeException>(() => TensorLayout.Validate([4], [-1], "lengths", "strides"));
        Assert.Throws<OverflowException>(() => TensorLayout.Validate([nint.MaxValue, 4], [4, 1], "lengths", "strides"));
        TensorLayout.Validate([4, 0], [0, 0], "lengths", "strides");
    }
}
