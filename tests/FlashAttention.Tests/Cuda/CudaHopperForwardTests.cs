using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The forward kernels that share the shapes the Hopper kernel covers, each pinned for the test (ForwardVariant.HopperPinned):
/// the sm_90a kernel (wgmma, Kernels/flash_fwd_sm90.cu) and the FlashAttention-2 kernel it replaces there, which other GPUs
/// and FLASHATTN_FWD_SM90=0 still run. Odd lengths on both sides, GQA, causal with seqlen_q above and below seqlen_k,
/// windows, padded head dims; forward and gradients against the float64 reference.
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaHopperForwardTests
{
    public static TheoryData<bool, int, Dtype, string> Cases()
    {
        var data = new TheoryData<bool, int, Dtype, string>();
        foreach (bool hopper in new[] { true, false })
            foreach (int headDim in new[] { 64, 40, 128, 100, 256, 200 })
                foreach (var dtype in new[] { Dtype.Fp16, Dtype.Bf16 })
                    foreach (var mask in new[] { "none", "causal", "window(50,20)" })
                        data.Add(hopper, headDim, dtype, mask);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ForwardAndGradientsMatchTheReference(bool hopper, int headDim, Dtype dtype, string mask)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        if (hopper && !ForwardVariant.HopperCovers(device.Architecture, headDim, false, false, false))
            Assert.Skip($"The Hopper forward needs an sm_90 GPU; this one is {device.Architecture}.");
        ForwardVariant.HopperPinned.Value = hopper;
        // seqlen_q not a multiple of the 128-row block, seqlen_k not a multiple of either key block; 4 query heads on 2.
        var problem = new Problem(2, 201, mask == "causal" ? 150 : 333, 4, 2, headDim);
        var options = mask switch
        {
            "causal" => new AttentionOptions { Causal = true },
            "window(50,20)" => new AttentionOptions { WindowLeft = 50, WindowRight = 20 },
            _ => AttentionOptions.Default,
        };
        var random = new TestRandom();
        if (dtype == Dtype.Fp16)
            AttentionCheck.Backward(problem, options, Inputs<Half>.Create(problem, random), CudaBackwardTests.ForwardOnGpu, CudaBackwardTests.BackwardOnGpu);
        else
            AttentionCheck.Backward(problem, options, Inputs<BFloat16>.Create(problem, random), CudaBackwardTests.ForwardOnGpu, CudaBackwardTests.BackwardOnGpu);
    }

    /// <summary>Long sequences: many key blocks (the double-buffered K/V loop), a causal diagonal deep inside the grid.</summary>
    [Theory]
    [InlineData(64, false)]
    [InlineData(64, true)]
    [InlineData(128, false)]
    [InlineData(128, true)]
    [InlineData(256, false)]
    [InlineData(256, true)]
    public void LongSequencesMatchTheReference(int headDim, bool causal)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        if (!ForwardVariant.HopperCovers(device.Architecture, headDim, false, false, false))
            Assert.Skip($"The Hopper forward needs an sm_90 GPU; this one is {device.Architecture}.");
        ForwardVariant.HopperPinned.Value = true;
        var problem = new Problem(1, 1000, 1100, 2, 1, headDim);
        AttentionCheck.Forward(problem, new AttentionOptions { Causal = causal }, inputs: Inputs<BFloat16>.Create(problem, new TestRandom()),
            run: CudaBackwardTests.ForwardOnGpu);
    }
}
