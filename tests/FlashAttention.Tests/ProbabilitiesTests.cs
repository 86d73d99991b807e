using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>ReturnProbabilities: (batch, heads, seqlen_q, seqlen_k) fp32 against the reference's P, negated where dropped.</summary>
public sealed class ProbabilitiesTests
{
    [Theory]
    [InlineData(Dtype.Fp32, false, 0f)]
    [InlineData(Dtype.Fp16, true, 0f)]
    [InlineData(Dtype.Bf16, false, 0f)]
    [InlineData(Dtype.Fp32, true, 0.3f)]
    [InlineData(Dtype.Bf16, false, 0.1f)]
    public void ProbabilitiesMatchReference(Dtype dtype, bool causal, float dropout)
    {
        var options = new AttentionOptions { Causal = causal, DropoutProbability = dropout };
        DtypeDispatch.Forward(dtype, new Problem(2, 77, 113, 2, 2, 40), options, checkProbabilities: true);
    }

    [Fact]
    public void ProbabilitiesHaveTheDocumentedShape()
    {
        var problem = new Problem(2, 5, 9, 4, 2, 8);
        var inputs = Inputs<float>.Create(problem);
        var result = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, new AttentionOptions { ReturnProbabilities = true },
            TestContext.Current.CancellationToken);
        Assert.NotNull(result.Probabilities);
        Assert.Equal([2, 4, 5, 9], result.Probabilities.Lengths.ToArray());
        var withoutFlag = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, cancellationToken: TestContext.Current.CancellationToken);
        Assert.Null(withoutFlag.Probabilities);
    }
}
