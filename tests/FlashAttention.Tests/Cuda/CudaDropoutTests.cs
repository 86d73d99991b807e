using FlashAttn.Cuda;
using FlashAttn.Dropout;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// Dropout in the CUDA kernels: the keep mask is the CPU path's Philox specification bit for bit, and forward and
/// backward with dropout match the float64 reference (which draws its mask from the same specification).
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaDropoutTests
{
    /// <summary>
    /// With V the identity (head dim >= seqlen_k), O[i, j] = P_ij * keep_ij / (1 - p): exactly zero where the GPU dropped
    /// (i, j), so O's zero pattern is the GPU's mask, compared element by element with the CPU specification.
    /// </summary>
    [Theory]
    [InlineData(0.3f, false)]
    [InlineData(0.1f, true)]
    public void GpuMaskEqualsTheCpuSpecificationBitForBit(float probability, bool causal)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        const int batch = 2, seqlenQ = 77, seqlenK = 64, heads = 3, headDim = 64;
        var random = new TestRandom();
        var state = random.NextDropoutState();
        var q = Precision<BFloat16>.FromFloats(random.Normal((long)batch * seqlenQ * heads * headDim, 0.5f));
        var k = Precision<BFloat16>.FromFloats(random.Normal((long)batch * seqlenK * heads * headDim, 0.5f));
        var v = new BFloat16[batch * seqlenK * heads * headDim];
        for (int b = 0; b < batch; b++)
            for (int j = 0; j < seqlenK; j++)
                for (int h = 0; h < heads; h++)
                    v[((b * seqlenK + j) * heads + h) * headDim + j] = (BFloat16)1f;
        using var dq = CudaTensor<BFloat16>.FromHost(Tensor.Create(q, [batch, seqlenQ, heads, headDim]), device);
        using var dk = CudaTensor<BFloat16>.FromHost(Tensor.Create(k, [batch, seqlenK, heads, headDim]), device);
        using var dv = CudaTensor<BFloat16>.FromHost(Tensor.Create(v, [batch, seqlenK, heads, headDim]), device);
        var options = new AttentionOptions { DropoutProbability = probability, DropoutState = state, Causal = causal };
        using var result = FlashAttention.Forward(dq, dk, dv, options);
        Assert.Equal(state, result.DropoutState);
        var output = result.Output.ToHost();

        var mask = new DropoutMask(probability, state, heads);
        var settings = AttentionSettings.Resolve(options, Validation.ProblemShape.Fixed(batch, seqlenQ, seqlenK, heads, heads, headDim), state);
        int compared = 0, dropped = 0;
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < seqlenQ; i++)
                    for (int j = 0; j < seqlenK; j++)
                    {
                        if (!settings.IsVisible(i, j, seqlenQ, seqlenK)) continue;
                        bool gpuKept = (float)output[b, i, h, j] != 0f;
                        bool cpuKept = mask.IsKept(b, h, i, j);
                        if (gpuKept != cpuKept)
                            Assert.Fail($"mask differs at batch {b} head {h} row {i} col {j}: GPU {(gpuKept ? "kept" : "dropped")}, CPU {(cpuKept ? "kept" : "dropped")} [{state}, {random}]");
                        compared++;
                        if (!cpuKept) dropped++;
                    }
        Assert.True(compared > 1000 && dropped > 0, $"compared {compared}, dropped {dropped}");
    }

    [Theory]
    [InlineData(1, 113, 200, 4, 2, 64, false)]
    [InlineData(2, 130, 130, 2, 2, 128, true)]
    [InlineData(1, 77, 40, 3, 1, 40, true)]
    public void ForwardAndBackwardWithDropoutMatchReference(int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal)
    {
        GpuRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        var inputs = Inputs<Half>.Create(new Problem(batch, seqlenQ, seqlenK, headsQ, headsKv, headDim), random);
        var options = new AttentionOptions { DropoutProbability = 0.17f, DropoutState = random.NextDropoutState(), Causal = causal };
        AttentionCheck.Backward<Half>(inputs.Problem, options, inputs, CudaBackwardTests.ForwardOnGpu, CudaBackwardTests.BackwardOnGpu);
        var bf16 = Inputs<BFloat16>.Create(new Problem(batch, seqlenQ, seqlenK, headsQ, headsKv, headDim), random);
        AttentionCheck.Backward<BFloat16>(bf16.Problem, options, bf16, CudaBackwardTests.ForwardOnGpu, CudaBackwardTests.BackwardOnGpu);
    }

    [Fact]
    public void BackwardWithDropoutNeedsTheForwardState()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([1, 8, 1, 64], device);
        using var lse = CudaTensor<float>.Allocate([1, 1, 8], device);
        var error = Assert.Throws<ArgumentException>(() => FlashAttention.Backward(q, q, q, q, q, lse, new AttentionOptions { DropoutProbability = 0.1f }));
        Assert.Equal("dropoutState", error.ParamName);
    }
}
