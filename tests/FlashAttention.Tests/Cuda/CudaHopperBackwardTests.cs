using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The backward kernels that share the shapes the Hopper backward covers (head dims up to 128 without dropout), each pinned
/// for the test (BackwardVariant.HopperPinned): the sm_90a kernel (wgmma, Kernels/flash_bwd_sm90.cu) and flash_bwd.cu, which
/// other GPUs and FLASHATTN_BWD_SM90=0 still run. Odd lengths on both sides (partial key and query blocks), GQA, causal with
/// seqlen_q above and below seqlen_k, windows, padded head dims, softcap and ALiBi, deterministic dQ, long sequences; gradients
/// against the float64 reference.
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaHopperBackwardTests
{
    public static TheoryData<bool, int, Dtype, string> Cases()
    {
        var data = new TheoryData<bool, int, Dtype, string>();
        foreach (bool hopper in new[] { true, false })
            foreach (int headDim in new[] { 64, 40, 128, 100 })
                foreach (var dtype in new[] { Dtype.Fp16, Dtype.Bf16 })
                    foreach (var options in new[] { "none", "causal", "window(50,20)", "softcap+alibi", "deterministic+causal" })
                        data.Add(hopper, headDim, dtype, options);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void GradientsMatchTheReference(bool hopper, int headDim, Dtype dtype, string options)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        if (hopper && !BackwardVariant.HopperCovers(device.Architecture, headDim, false, false))
            Assert.Skip($"The Hopper backward needs an sm_90 GPU; this one is {device.Architecture}.");
        BackwardVariant.HopperPinned.Value = hopper;
        // seqlen_k 333: two key blocks of 128 and a partial third; seqlen_q 201: four query blocks of 64, the last partial.
        var problem = new Problem(2, 201, options.Contains("causal", StringComparison.Ordinal) ? 150 : 333, 4, 2, headDim);
        var random = new TestRandom();
        bool softcap = options.Contains("softcap", StringComparison.Ordinal);
        var attention = new AttentionOptions
        {
            Causal = options.Contains("causal", StringComparison.Ordinal),
            Deterministic = options.Contains("deterministic", StringComparison.Ordinal),
            WindowLeft = options == "window(50,20)" ? 50 : -1,
            WindowRight = options == "window(50,20)" ? 20 : -1,
            Softcap = softcap ? 5f : 0f,
            SoftmaxScale = softcap ? CudaScoreModifierTests.SaturatingScale(5f, headDim) : null,
            AlibiSlopes = options.Contains("alibi", StringComparison.Ordinal) ? CudaScoreModifierTests.Slopes(random, problem.Batch, problem.HeadsQ) : null,
        };
        if (dtype == Dtype.Fp16)
            AttentionCheck.Backward(problem, attention, Inputs<Half>.Create(problem, random), CudaBackwardTests.ForwardOnGpu, CudaBackwardTests.BackwardOnGpu);
        else
            AttentionCheck.Backward(problem, attention, Inputs<BFloat16>.Create(problem, random), CudaBackwardTests.ForwardOnGpu, CudaBackwardTests.BackwardOnGpu);
    }

    /// <summary>Many key and query blocks (the double-buffered query stages, the GQA head loop) and a causal diagonal deep in
    /// the grid, with MQA (8 query heads on one KV head).</summary>
    [Theory]
    [InlineData(64, false)]
    [InlineData(64, true)]
    [InlineData(128, false)]
    [InlineData(128, true)]
    public void LongSequencesMatchTheReference(int headDim, bool causal)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        if (!BackwardVariant.HopperCovers(device.Architecture, headDim, false, false))
            Assert.Skip($"The Hopper backward needs an sm_90 GPU; this one is {device.Architecture}.");
        BackwardVariant.HopperPinned.Value = true;
        var problem = new Problem(1, 700, 900, 8, 1, headDim);
        var random = new TestRandom();
        AttentionCheck.Backward(problem, new AttentionOptions { Causal = causal }, Inputs<BFloat16>.Create(problem, random),
            CudaBackwardTests.ForwardOnGpu, CudaBackwardTests.BackwardOnGpu);
    }

    /// <summary>Deterministic mode: the same gradients bit for bit, run after run.</summary>
    [Theory]
    [InlineData(64)]
    [InlineData(128)]
    public void DeterministicModeIsBitwiseRepeatable(int headDim)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        if (!BackwardVariant.HopperCovers(device.Architecture, headDim, false, false))
            Assert.Skip($"The Hopper backward needs an sm_90 GPU; this one is {device.Architecture}.");
        BackwardVariant.HopperPinned.Value = true;
        var problem = new Problem(2, 300, 300, 4, 2, headDim);
        var inputs = Inputs<Half>.Create(problem);
        var options = new AttentionOptions { Causal = true, Deterministic = true };
        var forward = CudaBackwardTests.ForwardOnGpu(inputs, options);
        var first = CudaBackwardTests.Flat(CudaBackwardTests.BackwardOnGpu(inputs, options, forward));
        for (int run = 0; run < 3; run++)
            Assert.Equal(first, CudaBackwardTests.Flat(CudaBackwardTests.BackwardOnGpu(inputs, options, forward)));
    }
}
