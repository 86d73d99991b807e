using System.Runtime.InteropServices;
using FlashAttn.Tests.Infrastructure;
using FlashAttn.TorchSharp;
using TorchSharp;

namespace FlashAttn.Tests.TorchSharp;

/// <summary>
/// The interop the adapter rests on: THSTensor_data (exported by libLibTorchSharp.so) returns the address of element
/// [0, 0, ...] including the storage offset, so views (slices, selects of packed tensors) need no offset added; and a
/// failure inside backward (which runs in libtorch's autograd engine) surfaces as an exception, not a crash.
/// </summary>
[Trait("Category", "TorchSharp")]
[Collection(TorchSharpCollection.Name)]
public sealed class TorchInteropTests
{
    [Fact]
    public unsafe void DataPointerIncludesTheStorageOffset()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var baseTensor = torch.arange(0, 120, 1, torch.ScalarType.Float32).reshape(4, 5, 6);
        nint basePointer = TorchTensors.DataPointer(baseTensor);
        Assert.NotEqual(0, basePointer);
        Assert.Equal(0, baseTensor.storage_offset());

        foreach (var (view, what) in new[]
                 {
                     (baseTensor.select(0, 2), "select(0, 2)"),
                     (baseTensor.narrow(1, 3, 2).narrow(2, 1, 4), "narrow(1, 3, 2).narrow(2, 1, 4)"),
                     (baseTensor.select(2, 5), "select(2, 5)"),
                 })
        {
            long offset = view.storage_offset();
            Assert.True(offset > 0, what);
            nint pointer = TorchTensors.DataPointer(view);
            Assert.Equal(basePointer + (nint)(offset * view.element_size()), pointer);
            // The first element read through the pointer is the view's first element.
            float first = *(float*)pointer;
            Assert.Equal(view.flatten()[0].item<float>(), first);
        }
    }

    [Theory]
    [InlineData(torch.ScalarType.Float16)]
    [InlineData(torch.ScalarType.BFloat16)]
    public void DataPointerWorksForHalfPrecision(torch.ScalarType dtype)
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var values = torch.tensor(new float[] { 1.5f, -2.25f, 3.0f, 0.125f }).to(dtype);
        var view = values.narrow(0, 1, 3);
        nint pointer = TorchTensors.DataPointer(view);
        Assert.Equal(TorchTensors.DataPointer(values) + 2, pointer);
        ushort bits = (ushort)Marshal.ReadInt16(pointer);
        float value = dtype == torch.ScalarType.Float16 ? (float)BitConverter.UInt16BitsToHalf(bits) : (float)BFloat16.FromBits(bits);
        Assert.Equal(-2.25f, value);
    }

    [Fact]
    public void CudaDataPointerIncludesTheStorageOffset()
    {
        TorchSharpRequirement.SkipIfNoCuda();
        using var scope = torch.NewDisposeScope();
        var baseTensor = torch.zeros([3, 8, 16], torch.ScalarType.BFloat16, torch.CUDA);
        var view = baseTensor.select(1, 5);
        nint basePointer = TorchTensors.DataPointer(baseTensor);
        Assert.Equal(basePointer + (nint)(view.storage_offset() * 2), TorchTensors.DataPointer(view));
        // The driver knows the pointer as device memory: a view over it is accepted.
        using var cudaView = TorchTensors.CudaView<BFloat16>(view);
        Assert.Equal([3, 16], cudaView.Lengths.ToArray());
        Assert.Equal([128, 1], cudaView.Strides.ToArray());
    }

    /// <summary>
    /// An input modified in place after forward makes torch refuse to hand back the saved tensors inside our backward. The
    /// exception cannot cross libtorch's engine; it must come out of loss.backward() as an error, and the cause is kept.
    /// </summary>
    [Fact]
    public void FailureInsideBackwardSurfacesAsAnException()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        var leaf = TorchTest.Normal(random, [1, 8, 2, 16]).requires_grad_(true);
        var q = leaf * 1.0;
        var output = FlashAttentionTorch.Attention(q, q, q);
        using (torch.no_grad())
            q.add_(1.0);
        FlashAttentionTorch.ClearLastBackwardException();
        var error = Assert.ThrowsAny<Exception>(() => output.sum().backward());
        Assert.Contains("invalid gradient", error.Message, StringComparison.OrdinalIgnoreCase);
        var cause = FlashAttentionTorch.LastBackwardException;
        Assert.NotNull(cause);
        Assert.Contains("inplace", cause.Message.Replace("in-place", "inplace", StringComparison.Ordinal), StringComparison.OrdinalIgnoreCase);
    }
}

/// <summary>The TorchSharp test classes run one at a time: they share the process-wide LastBackwardException and libtorch's thread pool.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TorchSharpCollection
{
    public const string Name = "TorchSharp";
}
