using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>Dropout: reproducible from (seed, offset), different for another offset, statistically right, and the state reported and reused.</summary>
public sealed class DropoutTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public void SameSeedAndOffsetGiveIdenticalOutput()
    {
        var inputs = Inputs<Half>.Create(new Problem(2, 60, 70, 2, 1, 32));
        var options = new AttentionOptions { DropoutProbability = 0.3f, DropoutState = inputs.Random.NextDropoutState() };
        var first = FlashAttention.Forward<Half>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, Ct);
        var second = FlashAttention.Forward<Half>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, Ct);
        Assert.Equal(options.DropoutState, first.DropoutState);
        Tolerance.AssertIdentical("O", Precision<Half>.Flatten(first.Output), Precision<Half>.Flatten(second.Output), $"[{inputs.Random}]");
    }

    [Fact]
    public void DifferentOffsetGivesDifferentOutput()
    {
        var inputs = Inputs<float>.Create(new Problem(1, 40, 40, 2, 2, 16));
        var state = inputs.Random.NextDropoutState();
        var options = new AttentionOptions { DropoutProbability = 0.3f, DropoutState = state };
        var first = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, Ct);
        var second = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor,
            options with { DropoutState = state with { Offset = state.Offset + 1 } }, Ct);
        var third = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor,
            options with { DropoutState = state with { Seed = state.Seed ^ 1 } }, Ct);
        var o1 = Precision<float>.Flatten(first.Output);
        Assert.False(o1.SequenceEqual(Precision<float>.Flatten(second.Output)), $"another offset gave the same output [{inputs.Random}]");
        Assert.False(o1.SequenceEqual(Precision<float>.Flatten(third.Output)), $"another seed gave the same output [{inputs.Random}]");
        // The LSE does not depend on dropout (it normalises the un-dropped P).
        Tolerance.AssertIdentical("LSE", Flat.Of(first.LogSumExp), Flat.Of(second.LogSumExp));
    }

    [Theory]
    [InlineData(0.1f)]
    [InlineData(0.5f)]
    [InlineData(0.83f)]
    public void DropRateIsWithinFiveSigma(float p)
    {
        var problem = new Problem(2, 128, 200, 2, 2, 8);
        var inputs = Inputs<float>.Create(problem);
        var options = new AttentionOptions { DropoutProbability = p, ReturnProbabilities = true };
        var result = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, Ct);
        Assert.NotNull(result.Probabilities);
        Assert.NotNull(result.DropoutState);
        var probabilities = Flat.Of(result.Probabilities);
        long dropped = 0, total = 0;
        var droppedByWord = new long[4];
        for (int i = 0; i < probabilities.Length; i++)
        {
            if (probabilities[i] == 0) continue; // underflow: no sign to read
            total++;
            if (probabilities[i] < 0)
            {
                dropped++;
                droppedByWord[i % problem.SeqlenK % 4]++;
            }
        }
        Assert.True(total > 0.99 * probabilities.Length, $"too many zero probabilities ({probabilities.Length - total}) [{inputs.Random}]");
        double sigma = Math.Sqrt(p * (1 - p) / total);
        double rate = (double)dropped / total;
        Assert.True(Math.Abs(rate - p) < 5 * sigma, $"drop rate {rate:F5} for p = {p} (sigma {sigma:G3}, n = {total}); state {result.DropoutState}");
        // Each of Philox's four output words on its own (columns j % 4).
        double wordSigma = Math.Sqrt(p * (1 - p) / (total / 4.0));
        for (int w = 0; w < 4; w++)
        {
            double wordRate = droppedByWord[w] / (total / 4.0);
            Assert.True(Math.Abs(wordRate - p) < 5 * wordSigma, $"word {w}: drop rate {wordRate:F5} for p = {p}; state {result.DropoutState}");
        }
    }

    [Fact]
    public void ProcessGeneratorSuppliesAndAdvancesTheState()
    {
        var inputs = Inputs<float>.Create(new Problem(1, 8, 8, 1, 1, 8));
        var options = new AttentionOptions { DropoutProbability = 0.5f };
        var first = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, Ct);
        var second = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, Ct);
        Assert.NotNull(first.DropoutState);
        Assert.NotNull(second.DropoutState);
        Assert.Equal(first.DropoutState.Value.Seed, second.DropoutState.Value.Seed);
        Assert.True(second.DropoutState.Value.Offset > first.DropoutState.Value.Offset, $"{first.DropoutState} then {second.DropoutState}");

        var off = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, cancellationToken: Ct);
        Assert.Null(off.DropoutState);
    }

    [Fact]
    public void BackwardTakesTheStateFromTheOptionsOrTheArgument()
    {
        var problem = new Problem(1, 50, 50, 2, 2, 16);
        var inputs = Inputs<float>.Create(problem);
        var state = inputs.Random.NextDropoutState();
        var withState = new AttentionOptions { DropoutProbability = 0.4f, DropoutState = state };
        var forward = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, withState, Ct);
        var fromOptions = FlashAttention.Backward<float>(inputs.DOutTensor, inputs.QTensor, inputs.KTensor, inputs.VTensor, forward.Output,
            forward.LogSumExp, withState, cancellationToken: Ct);
        var fromArgument = FlashAttention.Backward<float>(inputs.DOutTensor, inputs.QTensor, inputs.KTensor, inputs.VTensor, forward.Output,
            forward.LogSumExp, new AttentionOptions { DropoutProbability = 0.4f }, state, Ct);
        var otherState = FlashAttention.Backward<float>(inputs.DOutTensor, inputs.QTensor, inputs.KTensor, inputs.VTensor, forward.Output,
            forward.LogSumExp, new AttentionOptions { DropoutProbability = 0.4f }, state with { Offset = state.Offset + 1 }, Ct);
        Tolerance.AssertIdentical("dQ", Precision<float>.Flatten(fromOptions.DQ), Precision<float>.Flatten(fromArgument.DQ), $"[{inputs.Random}]");
        Tolerance.AssertIdentical("dV", Precision<float>.Flatten(fromOptions.DV), Precision<float>.Flatten(fromArgument.DV), $"[{inputs.Random}]");
        Assert.False(Precision<float>.Flatten(fromOptions.DV).SequenceEqual(Precision<float>.Flatten(otherState.DV)),
            $"backward ignored the dropout state [{inputs.Random}]");
    }
}
