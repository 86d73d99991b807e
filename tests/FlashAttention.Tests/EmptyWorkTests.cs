using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>Empty work is not an error: batch 0 or seqlen_q 0 give empty results, seqlen_k 0 gives O = 0 and LSE = +inf.</summary>
public sealed class EmptyWorkTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static (AttentionResult<float> Forward, AttentionGradients<float> Gradients) Run(Problem problem)
    {
        var inputs = Inputs<float>.Create(problem);
        var forward = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, new AttentionOptions { Causal = true }, Ct);
        Assert.Equal(problem.QLengths, forward.Output.Lengths.ToArray());
        Assert.Equal(problem.LseLengths, forward.LogSumExp.Lengths.ToArray());
        var grads = FlashAttention.Backward<float>(inputs.DOutTensor, inputs.QTensor, inputs.KTensor, inputs.VTensor, forward.Output,
            forward.LogSumExp, new AttentionOptions { Causal = true }, cancellationToken: Ct);
        Assert.Equal(problem.QLengths, grads.DQ.Lengths.ToArray());
        Assert.Equal(problem.KvLengths, grads.DK.Lengths.ToArray());
        Assert.Equal(problem.KvLengths, grads.DV.Lengths.ToArray());
        return (forward, grads);
    }

    // Empty System.Numerics.Tensors tensors report stride 0 in every dimension (and cannot be built with other strides);
    // head dim 1 sidesteps the contiguity check, head dim 8 is what users hit.
    [Theory]
    [InlineData(1)]
    [InlineData(8)]
    public void BatchZero(int headDim)
    {
        var (forward, grads) = Run(new Problem(0, 5, 7, 2, 1, headDim));
        Assert.Equal(0, forward.Output.FlattenedLength);
        Assert.Equal(0, grads.DK.FlattenedLength);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(8)]
    public void SeqlenQZero(int headDim)
    {
        var (forward, grads) = Run(new Problem(2, 0, 7, 2, 1, headDim));
        Assert.Equal(0, forward.Output.FlattenedLength);
        Assert.Equal(0, forward.LogSumExp.FlattenedLength);
        Assert.All(Precision<float>.Flatten(grads.DK), x => Assert.Equal(0, x));
        Assert.All(Precision<float>.Flatten(grads.DV), x => Assert.Equal(0, x));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(8)]
    public void SeqlenKZero(int headDim)
    {
        var (forward, grads) = Run(new Problem(2, 5, 0, 2, 1, headDim));
        Assert.All(Precision<float>.Flatten(forward.Output), x => Assert.Equal(0, x));
        Assert.All(Flat.Of(forward.LogSumExp), x => Assert.True(double.IsPositiveInfinity(x), $"LSE {x}"));
        Assert.All(Precision<float>.Flatten(grads.DQ), x => Assert.Equal(0, x));
        Assert.Equal(0, grads.DK.FlattenedLength);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(4)]
    public void SeqlenKZeroWithDropoutAndProbabilities(int headDim)
    {
        var inputs = Inputs<Half>.Create(new Problem(1, 3, 0, 1, 1, headDim));
        var result = FlashAttention.Forward<Half>(inputs.QTensor, inputs.KTensor, inputs.VTensor,
            new AttentionOptions { DropoutProbability = 0.5f, ReturnProbabilities = true }, Ct);
        Assert.All(Precision<Half>.Flatten(result.Output), x => Assert.Equal(0, x));
        Assert.NotNull(result.Probabilities);
        Assert.Equal([1, 1, 3, 0], result.Probabilities.Lengths.ToArray());
    }

    [Theory]
    [InlineData(1)]
    [InlineData(8)]
    public void VarlenWithNoSequences(int headDim)
    {
        var q = Tensor.Create(Array.Empty<float>(), [0, 2, headDim]);
        var kv = Tensor.Create(Array.Empty<float>(), [0, 1, headDim]);
        var result = FlashAttention.ForwardVarlen<float>(q, kv, kv, [0], [0], 0, 0, cancellationToken: Ct);
        Assert.Equal([0, 2, headDim], result.Output.Lengths.ToArray());
        Assert.Equal([2, 0], result.LogSumExp.Lengths.ToArray());
        var grads = FlashAttention.BackwardVarlen<float>(q, q, kv, kv, result.Output, result.LogSumExp, [0], [0], 0, 0, cancellationToken: Ct);
        Assert.Equal(0, grads.DQ.FlattenedLength);
    }
}
