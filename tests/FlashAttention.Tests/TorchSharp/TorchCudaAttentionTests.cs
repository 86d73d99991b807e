using FlashAttn.Tests.Infrastructure;
using FlashAttn.TorchSharp;
using TorchSharp;

namespace FlashAttn.Tests.TorchSharp;

/// <summary>
/// The TorchSharp adapter on CUDA tensors (fp16/bf16, our kernels on the legacy default stream, outputs allocated by
/// torch) against TorchSharp's unfused attention: float64 reference on the CPU, naive baseline in the same precision on
/// the GPU. Skipped unless TorchSharp loads, torch sees a CUDA device and our CUDA path can use it. The backward cases
/// carry Category=CudaBackward: they test real gradients and fail while the CUDA backward kernels are missing.
/// </summary>
[Trait("Category", "TorchSharp")]
[Trait("Category", "Cuda")]
[Collection(TorchSharpCollection.Name)]
public sealed class TorchCudaAttentionTests
{
    public static TheoryData<TorchPacking, int, int, int, int, int, int, bool> Cases => new()
    {
        { TorchPacking.Separate, 2, 17, 113, 4, 2, 40, false },  // seqlen_q < seqlen_k, GQA, head dim padded
        { TorchPacking.Separate, 1, 129, 257, 2, 1, 111, true }, // MQA, odd head dim, causal bottom-right
        { TorchPacking.Separate, 2, 256, 256, 4, 4, 128, true },
        { TorchPacking.QkvPacked, 2, 200, 200, 3, 3, 64, false },
        { TorchPacking.QkvPacked, 1, 333, 333, 2, 2, 96, true },
        { TorchPacking.KvPacked, 1, 77, 300, 4, 2, 256, false },
        { TorchPacking.KvPacked, 2, 64, 64, 2, 2, 32, true },
    };

    /// <summary>Every forward case (head dims up to 256, both backward kernel layouts) plus a head dim 192 one.</summary>
    public static TheoryData<TorchPacking, int, int, int, int, int, int, bool> BackwardCases => new()
    {
        { TorchPacking.Separate, 2, 17, 113, 4, 2, 40, false },
        { TorchPacking.Separate, 1, 129, 257, 2, 1, 111, true },
        { TorchPacking.Separate, 2, 256, 256, 4, 4, 128, true },
        { TorchPacking.Separate, 1, 150, 150, 2, 2, 160, true },  // wide backward kernel, bucket 192
        { TorchPacking.QkvPacked, 2, 200, 200, 3, 3, 64, false },
        { TorchPacking.QkvPacked, 1, 333, 333, 2, 2, 96, true },
        { TorchPacking.KvPacked, 1, 77, 300, 4, 2, 256, false },
        { TorchPacking.KvPacked, 2, 64, 64, 2, 2, 32, true },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Bf16ForwardMatchesTorchReference(TorchPacking packing, int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal)
    {
        TorchSharpRequirement.SkipIfNoCuda();
        TorchAttentionCheck.ForwardBackward(packing, batch, seqlenQ, seqlenK, headsQ, headsKv, headDim, causal, torch.ScalarType.BFloat16, torch.CUDA,
            backward: false);
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Fp16ForwardMatchesTorchReference(TorchPacking packing, int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal)
    {
        TorchSharpRequirement.SkipIfNoCuda();
        TorchAttentionCheck.ForwardBackward(packing, batch, seqlenQ, seqlenK, headsQ, headsKv, headDim, causal, torch.ScalarType.Float16, torch.CUDA,
            backward: false);
    }

    [Theory]
    [Trait("Category", "CudaBackward")]
    [MemberData(nameof(BackwardCases))]
    public void Bf16BackwardMatchesTorchReference(TorchPacking packing, int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal)
    {
        TorchSharpRequirement.SkipIfNoCuda();
        TorchAttentionCheck.ForwardBackward(packing, batch, seqlenQ, seqlenK, headsQ, headsKv, headDim, causal, torch.ScalarType.BFloat16, torch.CUDA);
    }

    [Theory]
    [Trait("Category", "CudaBackward")]
    [MemberData(nameof(BackwardCases))]
    public void Fp16BackwardMatchesTorchReference(TorchPacking packing, int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal)
    {
        TorchSharpRequirement.SkipIfNoCuda();
        TorchAttentionCheck.ForwardBackward(packing, batch, seqlenQ, seqlenK, headsQ, headsKv, headDim, causal, torch.ScalarType.Float16, torch.CUDA);
    }

    /// <summary>The module in bf16 on the GPU: forward and backward run and give finite, non-zero parameter gradients.</summary>
    [Fact]
    [Trait("Category", "CudaBackward")]
    public void ModuleTrainsOnTheGpu()
    {
        TorchSharpRequirement.SkipIfNoCuda();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(random.Seed);
        using var module = new FlashMultiHeadAttention(256, 4, numKvHeads: 2, causal: true, device: torch.CUDA, dtype: torch.ScalarType.BFloat16);
        var x = TorchTest.Normal(random, [2, 128, 256], torch.ScalarType.BFloat16, torch.CUDA);
        var y = module.call(x);
        TorchTest.AssertFinite("y", y);
        BackwardFailure.Run(() => y.@float().pow(2).mean().backward());
        foreach (var (name, parameter) in module.named_parameters())
        {
            TorchTest.AssertFinite("grad of " + name, parameter.grad!);
            Assert.True(parameter.grad!.abs().sum().to(torch.ScalarType.Float32).item<float>() > 0, $"grad of {name} is all zeros (seed {random.Seed})");
        }
    }

    [Fact]
    public void Float32OnCudaIsRefusedWithAHint()
    {
        TorchSharpRequirement.SkipIfNoCuda();
        using var scope = torch.NewDisposeScope();
        var q = torch.randn([1, 8, 2, 64], torch.ScalarType.Float32, torch.CUDA);
        var e = Assert.Throws<NotSupportedException>(() => FlashAttentionTorch.Attention(q, q, q));
        Assert.Contains("fp16/bf16", e.Message);
    }

    [Fact]
    public void InputsOnDifferentDevicesAreRejected()
    {
        TorchSharpRequirement.SkipIfNoCuda();
        using var scope = torch.NewDisposeScope();
        var q = torch.randn([1, 8, 2, 64], torch.ScalarType.BFloat16, torch.CUDA);
        var k = torch.randn([1, 8, 2, 64], torch.ScalarType.BFloat16);
        var e = Assert.Throws<ArgumentException>(() => FlashAttentionTorch.Attention(q, k, k));
        Assert.Equal("k", e.ParamName);
    }

    /// <summary>
    /// No synchronisation between our launch and torch's next operation: both run on the legacy default stream, so a torch
    /// op queued right after the forward sees the finished output (repeated to give a race a chance to show).
    /// </summary>
    [Fact]
    public void TorchWorkAfterTheForwardSeesItsResult()
    {
        TorchSharpRequirement.SkipIfNoCuda();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        var q = TorchTest.Normal(random, [4, 1024, 8, 128], torch.ScalarType.BFloat16, torch.CUDA);
        var expected = FlashAttentionTorch.Attention(q, q, q, new AttentionOptions { Causal = true }).@float().sum().item<float>();
        for (int i = 0; i < 5; i++)
        {
            // A fresh output each time, reduced by torch at once, with no synchronisation in between.
            float sum = FlashAttentionTorch.Attention(q, q, q, new AttentionOptions { Causal = true }).@float().sum().item<float>();
            Assert.Equal(expected, sum);
        }
    }
}
