using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>Long CPU work honours its CancellationToken.</summary>
public sealed class CancellationTests
{
    private static readonly Problem Moderate = new(1, 512, 512, 4, 2, 64);

    [Fact]
    public void PreCancelledForwardThrows()
    {
        var inputs = Inputs<float>.Create(Moderate);
        using var source = new CancellationTokenSource();
        source.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, null, source.Token));
    }

    [Fact]
    public void PreCancelledBackwardThrows()
    {
        var inputs = Inputs<float>.Create(Moderate);
        var forward = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, cancellationToken: TestContext.Current.CancellationToken);
        using var source = new CancellationTokenSource();
        source.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => FlashAttention.Backward<float>(inputs.DOutTensor, inputs.QTensor, inputs.KTensor,
            inputs.VTensor, forward.Output, forward.LogSumExp, cancellationToken: source.Token));
    }

    [Fact]
    public void PreCancelledForwardIntoThrows()
    {
        var inputs = Inputs<float>.Create(Moderate);
        var output = Tensor.CreateFromShape<float>(Moderate.QLengths);
        var lse = Tensor.CreateFromShape<float>(Moderate.LseLengths);
        using var source = new CancellationTokenSource();
        source.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => FlashAttention.ForwardInto<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor,
            output, lse, null, source.Token));
    }
}
