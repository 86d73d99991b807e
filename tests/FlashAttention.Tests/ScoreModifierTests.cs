using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>Custom softmax scale, tanh soft-capping and ALiBi (per head and per batch and head) against the reference.</summary>
public sealed class ScoreModifierTests
{
    [Theory]
    [InlineData(Dtype.Fp32, 0.37f)]
    [InlineData(Dtype.Fp16, 0.05f)]
    [InlineData(Dtype.Bf16, 1.5f)]
    public void CustomScale(Dtype dtype, float scale) =>
        DtypeDispatch.Forward(dtype, new Problem(1, 113, 113, 2, 2, 59), new AttentionOptions { SoftmaxScale = scale });

    [Theory]
    [InlineData(Dtype.Fp32, false)]
    [InlineData(Dtype.Fp16, true)]
    [InlineData(Dtype.Bf16, false)]
    public void Softcap(Dtype dtype, bool causal) =>
        // Scale 1 with cap 2 saturates many scores, so the tanh really bites.
        DtypeDispatch.Forward(dtype, new Problem(2, 113, 70, 2, 1, 40), new AttentionOptions { Softcap = 2f, SoftmaxScale = 1f, Causal = causal });

    [Theory]
    [InlineData(Dtype.Fp32, false)]
    [InlineData(Dtype.Fp16, true)]
    [InlineData(Dtype.Bf16, false)]
    public void AlibiPerHead(Dtype dtype, bool causal)
    {
        var slopes = Tensor.Create(new[] { 0.5f, 0.0625f, 0.0039f }, [3]);
        DtypeDispatch.Forward(dtype, new Problem(2, 90, 113, 3, 3, 40), new AttentionOptions { AlibiSlopes = slopes, Causal = causal });
    }

    [Theory]
    [InlineData(Dtype.Fp32)]
    [InlineData(Dtype.Fp16)]
    [InlineData(Dtype.Bf16)]
    public void AlibiPerBatchAndHead(Dtype dtype)
    {
        var random = new TestRandom();
        var slopes = Tensor.Create(random.Uniform(2 * 4, 0.01f, 1f), [2, 4]);
        DtypeDispatch.Forward(dtype, new Problem(2, 113, 60, 4, 2, 24), new AttentionOptions { AlibiSlopes = slopes });
    }

    /// <summary>Every option at once, as far as flash-attn allows: softcap excludes dropout, so dropout takes its place in the second case.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EverythingAtOnce(bool dropoutInsteadOfSoftcap)
    {
        var slopes = Tensor.Create(new[] { 0.25f, 0.125f }, [2]);
        var options = new AttentionOptions
        {
            SoftmaxScale = 0.3f, AlibiSlopes = slopes, WindowLeft = 30, WindowRight = 10,
            Softcap = dropoutInsteadOfSoftcap ? 0f : 5f, DropoutProbability = dropoutInsteadOfSoftcap ? 0.2f : 0f,
            DropoutState = new TestRandom().NextDropoutState(),
        };
        DtypeDispatch.Forward(Dtype.Fp32, new Problem(2, 100, 130, 2, 1, 33), options, checkProbabilities: true);
    }
}
