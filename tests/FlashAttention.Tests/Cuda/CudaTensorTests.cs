using System.Runtime.InteropServices;
using FlashAttn.Cuda;
using static FlashAttn.Tests.Cuda.TestKernels;

namespace FlashAttn.Tests.Cuda;

/// <summary>Device tensors: host round trips (dense and strided, every element type), views, fills, out of memory.</summary>
[Trait("Category", "Cuda")]
public sealed class CudaTensorTests
{
    private static T[] RandomValues<T>(int count, Func<float, T> convert)
    {
        var random = new Random();
        return Enumerable.Range(0, count).Select(_ => convert((float)(random.NextDouble() * 4 - 2) + 0.01f)).ToArray();
    }

    private static void RoundTripsThroughStridedHostInput<T>(Func<float, T> convert) where T : unmanaged
    {
        GpuRequirement.SkipIfUnavailable();
        // The host input is the transpose of a (5, 3) array: lengths (3, 5), strides (1, 3).
        T[] storage = RandomValues(15, convert);
        var host = new ReadOnlyTensorSpan<T>(storage, [3, 5], [1, 3]);
        using var device = CudaTensor<T>.FromHost(host);
        Assert.Equal([3, 5], device.Lengths.ToArray());
        Assert.True(device.IsRowMajor);
        T[] back = Flat(device.ToHost());
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 5; j++)
                Assert.Equal(storage[j * 3 + i], back[i * 5 + j]);

        // A host view with gaps between its elements: (2, 3, 4) with strides (40, 12, 2).
        T[] padded = RandomValues(80, convert);
        var gappy = new ReadOnlyTensorSpan<T>(padded, [2, 3, 4], [40, 12, 2]);
        using var device2 = CudaTensor<T>.FromHost(gappy);
        T[] back2 = Flat(device2.ToHost());
        int n = 0;
        for (int i = 0; i < 2; i++)
            for (int j = 0; j < 3; j++)
                for (int k = 0; k < 4; k++)
                    Assert.Equal(padded[40 * i + 12 * j + 2 * k], back2[n++]);

        // Dense input takes the direct path.
        T[] dense = RandomValues(24, convert);
        using var device3 = CudaTensor<T>.FromHost(new ReadOnlyTensorSpan<T>(dense, [2, 3, 4]));
        Assert.Equal(dense, Flat(device3.ToHost()));
    }

    [Fact]
    public void FloatRoundTrip() => RoundTripsThroughStridedHostInput(x => x);

    [Fact]
    public void HalfRoundTrip() => RoundTripsThroughStridedHostInput(x => (Half)x);

    [Fact]
    public void BFloat16RoundTrip() => RoundTripsThroughStridedHostInput(x => (BFloat16)x);

    [Fact]
    public void DisposingAViewDoesNotFreeTheMemory()
    {
        GpuRequirement.SkipIfUnavailable();
        float[] data = RandomValues(64, x => x);
        using var owner = CudaTensor<float>.FromHost(new ReadOnlyTensorSpan<float>(data, [8, 8]));
        var view = CudaTensor<float>.View(owner.DevicePointer, [8, 8], [8, 1]);
        Assert.True(view.IsView);
        Assert.False(owner.IsView);
        Assert.Equal(data, Flat(view.ToHost()));
        view.Dispose();
        Assert.True(view.IsDisposed);
        Assert.Throws<ObjectDisposedException>(() => view.DevicePointer);
        Assert.Throws<ObjectDisposedException>(() => view.ToHost());

        // Churn the allocator: had the view freed the memory, these could land on it.
        for (int i = 0; i < 4; i++)
        {
            using var other = CudaTensor<float>.Allocate([64]);
            other.Fill(0x7F);
        }
        Assert.Equal(data, Flat(owner.ToHost()));
    }

    [Fact]
    public void AStridedViewReadsAndWritesOnlyItsElements()
    {
        GpuRequirement.SkipIfUnavailable();
        float[] data = RandomValues(24, x => x);
        using var owner = CudaTensor<float>.FromHost(new ReadOnlyTensorSpan<float>(data, [4, 6]));
        // Columns 1..3 of the (4, 6) matrix.
        using var view = CudaTensor<float>.View(owner.DevicePointer + sizeof(float), [4, 3], [6, 1]);
        Assert.False(view.IsRowMajor);
        float[] slice = Flat(view.ToHost());
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 3; c++)
                Assert.Equal(data[r * 6 + c + 1], slice[r * 3 + c]);

        float[] replacement = RandomValues(12, x => x + 10);
        view.CopyFromHost(new ReadOnlyTensorSpan<float>(replacement, [4, 3]));
        float[] after = Flat(owner.ToHost());
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 6; c++)
                Assert.Equal(c is >= 1 and <= 3 ? replacement[r * 3 + c - 1] : data[r * 6 + c], after[r * 6 + c]);
        Assert.Throws<NotSupportedException>(() => view.Fill(0));
    }

    [Fact]
    public void FillSetsEveryByte()
    {
        GpuRequirement.SkipIfUnavailable();
        using var tensor = CudaTensor<float>.Allocate([3, 7]);
        tensor.Fill(0xFF);
        Assert.All(Flat(tensor.ToHost()), x => Assert.Equal(0xFFFFFFFFu, BitConverter.SingleToUInt32Bits(x)));
        using var halves = CudaTensor<Half>.Allocate([5]);
        halves.Fill(0xFF);
        Assert.All(Flat(halves.ToHost()), x => Assert.True(Half.IsNaN(x)));
    }

    [Fact]
    public void EmptyTensorsNeedNoMemory()
    {
        GpuRequirement.SkipIfUnavailable();
        using var empty = CudaTensor<BFloat16>.Allocate([0, 4]);
        Assert.Equal(0, empty.DevicePointer);
        Assert.Equal(0, empty.ElementCount);
        Assert.Equal(0, empty.ToHost().FlattenedLength);
        empty.CopyFromHost(empty.ToHost().AsReadOnlyTensorSpan());
        empty.Fill(1);
    }

    [Fact]
    public void ShapeMismatchAndDisposalAreReported()
    {
        GpuRequirement.SkipIfUnavailable();
        var tensor = CudaTensor<float>.Allocate([2, 3]);
        var error = Assert.Throws<ArgumentException>(() => tensor.CopyFromHost(new float[5]));
        Assert.Equal("host", error.ParamName);
        tensor.Dispose();
        tensor.Dispose();
        Assert.Throws<ObjectDisposedException>(() => tensor.ToHost());
        Assert.Throws<ObjectDisposedException>(() => tensor.Fill(0));
    }

    [Fact]
    public void ViewsRejectHostAndMisalignedPointers()
    {
        GpuRequirement.SkipIfUnavailable();
        var host = GCHandle.Alloc(new float[16], GCHandleType.Pinned);
        try
        {
            Assert.Throws<ArgumentException>(() => CudaTensor<float>.View(host.AddrOfPinnedObject(), [16]));
        }
        finally
        {
            host.Free();
        }
        using var owner = CudaTensor<float>.Allocate([16]);
        Assert.Throws<ArgumentException>(() => CudaTensor<float>.View(owner.DevicePointer + 2, [4]));
        Assert.Throws<ArgumentException>(() => CudaTensor<float>.View(0, [4]));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaTensor<float>.View(owner.DevicePointer, [4], [-1]));
    }

    [Fact]
    public void OutOfMemoryIsReportedAndTheNextAllocationWorks()
    {
        GpuRequirement.SkipIfUnavailable();
        const long onePiB = 1L << 50;
        var error = Assert.Throws<CudaOutOfMemoryException>(() => CudaTensor<byte>.Allocate([unchecked((nint)onePiB)]));
        Assert.Equal(CudaResult.OutOfMemory, error.Result);
        Assert.Equal(onePiB, error.RequestedBytes);
        Assert.True(error.TotalBytes > 0, error.Message);
        Assert.InRange(error.FreeBytes, 1, error.TotalBytes);
        Assert.Contains("1.00 PiB", error.Message);
        Assert.Contains("free", error.Message);
        Assert.Contains("Fix", error.Message);

        float[] data = RandomValues(1 << 18, x => x);
        using var tensor = CudaTensor<float>.FromHost(data);
        Assert.Equal(data, Flat(tensor.ToHost()));
    }

    [Fact]
    public void CopiesOnANonBlockingStream()
    {
        GpuRequirement.SkipIfUnavailable();
        using var stream = CudaStream.Create();
        float[] data = RandomValues(1000, x => x);
        using var tensor = CudaTensor<float>.Allocate([1000]);
        tensor.CopyFromHost(data, stream);
        Assert.Equal(data, Flat(tensor.ToHost(stream)));
    }
}
