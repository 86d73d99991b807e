using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>The CPU backward reduces dQ in a fixed order: repeated runs are bitwise identical.</summary>
public sealed class DeterminismTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void BackwardTwiceIsBitwiseIdentical(bool deterministicFlag)
    {
        var problem = new Problem(2, 300, 260, 4, 2, 40); // several key blocks, so several dQ partial groups
        var inputs = Inputs<float>.Create(problem);
        var options = new AttentionOptions { Deterministic = deterministicFlag, DropoutProbability = 0.1f, DropoutState = inputs.Random.NextDropoutState() };
        var ct = TestContext.Current.CancellationToken;
        var forward = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, ct);
        var first = FlashAttention.Backward<float>(inputs.DOutTensor, inputs.QTensor, inputs.KTensor, inputs.VTensor, forward.Output, forward.LogSumExp, options, cancellationToken: ct);
        var second = FlashAttention.Backward<float>(inputs.DOutTensor, inputs.QTensor, inputs.KTensor, inputs.VTensor, forward.Output, forward.LogSumExp, options, cancellationToken: ct);
        string context = $"[{inputs.Random}]";
        Tolerance.AssertIdentical("dQ", Precision<float>.Flatten(first.DQ), Precision<float>.Flatten(second.DQ), context);
        Tolerance.AssertIdentical("dK", Precision<float>.Flatten(first.DK), Precision<float>.Flatten(second.DK), context);
        Tolerance.AssertIdentical("dV", Precision<float>.Flatten(first.DV), Precision<float>.Flatten(second.DV), context);
    }

    [Fact]
    public void ForwardTwiceIsBitwiseIdentical()
    {
        var inputs = Inputs<BFloat16>.Create(new Problem(1, 200, 300, 2, 1, 64));
        var ct = TestContext.Current.CancellationToken;
        var first = FlashAttention.Forward<BFloat16>(inputs.QTensor, inputs.KTensor, inputs.VTensor, cancellationToken: ct);
        var second = FlashAttention.Forward<BFloat16>(inputs.QTensor, inputs.KTensor, inputs.VTensor, cancellationToken: ct);
        Tolerance.AssertIdentical("O", Precision<BFloat16>.Flatten(first.Output), Precision<BFloat16>.Flatten(second.Output));
        Tolerance.AssertIdentical("LSE", Flat.Of(first.LogSumExp), Flat.Of(second.LogSumExp));
    }
}
