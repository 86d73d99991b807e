using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The forward kernels that share the shapes the Hopper kernel covers, each pinned for the test (ForwardVariant.HopperPinned):
/// the sm_90a kernel (wgmma, Kernels/flash_fwd_sm90.cu) and the FlashAttention-2 kernel it replaces there, which other GPUs
/// and FLASHATTN_FWD_SM90=0 still run. Odd lengths on both sides, GQA, causal with seqlen_q above and below seqlen_k,
/// windows (narrow ones take the 64-row Hopper tiling), padded head dims, softcap and ALiBi; forward and gradients against
/// the float64 reference.
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
        if (hopper && !ForwardVariant.HopperCovers(device.Architecture, headDim, false))
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

    public static TheoryData<bool, int, Dtype, string, string> ScoreModifierCases()
    {
        var data = new TheoryData<bool, int, Dtype, string, string>();
        // The FA2 kernel's softcap and ALiBi variants are covered by CudaScoreModifierTests and CudaEveryVariantTests.
        foreach (bool hopper in new[] { true })
            foreach (int headDim in new[] { 64, 128, 200 })
                foreach (var dtype in new[] { Dtype.Fp16, Dtype.Bf16 })
                    foreach (var modifiers in new[] { "softcap", "alibi", "alibi(batch)", "softcap+alibi" })
                        foreach (var mask in new[] { "none", "causal", "window(50,20)" })
                            data.Add(hopper, headDim, dtype, modifiers, mask);
        return data;
    }

    /// <summary>Softcap and ALiBi, compiled into either kernel. Without a causal mask the ALiBi fold meets key blocks on both
    /// sides of the diagonals (keys before every row's diagonal and keys after it), with one the blocks left of it; blocks
    /// that cross a diagonal take the per-score path.</summary>
    [Theory]
    [MemberData(nameof(ScoreModifierCases))]
    public void ScoreModifiersMatchTheReference(bool hopper, int headDim, Dtype dtype, string modifiers, string mask)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        if (hopper && !ForwardVariant.HopperCovers(device.Architecture, headDim, false))
            Assert.Skip($"The Hopper forward needs an sm_90 GPU; this one is {device.Architecture}.");
        ForwardVariant.HopperPinned.Value = hopper;
        var problem = new Problem(2, 201, mask == "causal" ? 150 : 333, 4, 2, headDim);
        var random = new TestRandom();
        bool softcap = modifiers.Contains("softcap", StringComparison.Ordinal);
        var options = new AttentionOptions
        {
            Causal = mask == "causal",
            WindowLeft = mask == "window(50,20)" ? 50 : -1,
            WindowRight = mask == "window(50,20)" ? 20 : -1,
            Softcap = softcap ? 5f : 0f,
            SoftmaxScale = softcap ? CudaScoreModifierTests.SaturatingScale(5f, headDim) : null,
            AlibiSlopes = modifiers.Contains("alibi", StringComparison.Ordinal)
                ? CudaScoreModifierTests.Slopes(random, modifiers.Contains("batch", StringComparison.Ordinal) ? problem.Batch : 0, problem.HeadsQ)
                : null,
        };
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
        LongSequence(headDim, causal, AttentionOptions.Default);
    }

    /// <summary>ALiBi over long sequences: most key blocks lie on one side of every diagonal and take the fold.</summary>
    [Theory]
    [InlineData(64, false)]
    [InlineData(64, true)]
    [InlineData(128, false)]
    [InlineData(128, true)]
    public void AlibiOverLongSequencesMatchesTheReference(int headDim, bool causal)
    {
        LongSequence(headDim, causal, new AttentionOptions { AlibiSlopes = CudaScoreModifierTests.Slopes(new TestRandom(), 0, 2) });
    }

    /// <summary>Narrow windows (the 64-row, one-warpgroup tiling at head dim 64; 128 rows above): many CTAs, a partial last block on
    /// both sides, seqlen_q above and below seqlen_k, first query blocks that see no key, a window of one key each side.</summary>
    [Theory]
    [InlineData(64, 700, 650, 100, 30)]
    [InlineData(64, 650, 700, 256, 0)]
    [InlineData(64, 900, 300, 10, 0)]      // bottom-right aligned: rows 0 to 599 see no key
    [InlineData(64, 333, 1000, 0, 200)]
    [InlineData(64, 517, 517, 1, 1)]
    [InlineData(128, 650, 700, 256, 0)]   // 128-row tiling
    [InlineData(40, 650, 700, 256, 0)]
    public void NarrowWindowsMatchTheReference(int headDim, int seqlenQ, int seqlenK, int left, int right)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        if (!ForwardVariant.HopperCovers(device.Architecture, headDim, false))
            Assert.Skip($"The Hopper forward needs an sm_90 GPU; this one is {device.Architecture}.");
        ForwardVariant.HopperPinned.Value = true;
        Assert.Equal(headDim <= 64 ? 64 : 128, ForwardVariant.Choose(device.Architecture, headDim, true, false, false, false, left, right).BlockM);
        var problem = new Problem(2, seqlenQ, seqlenK, 2, 1, headDim);
        var random = new TestRandom();
        AttentionCheck.Backward(problem, new AttentionOptions { WindowLeft = left, WindowRight = right }, Inputs<BFloat16>.Create(problem, random),
            CudaBackwardTests.ForwardOnGpu, CudaBackwardTests.BackwardOnGpu);
    }

    private static void LongSequence(int headDim, bool causal, AttentionOptions options)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        if (!ForwardVariant.HopperCovers(device.Architecture, headDim, false))
            Assert.Skip($"The Hopper forward needs an sm_90 GPU; this one is {device.Architecture}.");
        ForwardVariant.HopperPinned.Value = true;
        var problem = new Problem(1, 1000, 1100, 2, 1, headDim);
        AttentionCheck.Forward(problem, options with { Causal = causal }, inputs: Inputs<BFloat16>.Create(problem, new TestRandom()),
            run: CudaBackwardTests.ForwardOnGpu);
    }
}
