using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>ForwardInto writes every element of caller-owned outputs, and writes exactly what Forward returns.</summary>
public sealed class ForwardIntoTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData(Dtype.Fp32, false)]
    [InlineData(Dtype.Fp16, true)]
    [InlineData(Dtype.Bf16, false)]
    public void WritesEveryElementLikeForward(Dtype dtype, bool causal)
    {
        // seqlen_q > seqlen_k with causal: some rows see no key and must still be written (O = 0, LSE = +inf).
        var options = new AttentionOptions { Causal = causal, DropoutProbability = 0.2f, DropoutState = new TestRandom().NextDropoutState() };
        switch (dtype)
        {
            case Dtype.Fp32: Check<float>(options); break;
            case Dtype.Fp16: Check<Half>(options); break;
            default: Check<BFloat16>(options); break;
        }
    }

    private static void Check<T>(AttentionOptions options) where T : unmanaged
    {
        var problem = new Problem(2, 83, 47, 4, 2, 59);
        var inputs = Inputs<T>.Create(problem);
        string context = AttentionCheck.Context<T>(problem, options, inputs.Random);
        var output = Tensor.Create(Precision<T>.FromFloats(Enumerable.Repeat(float.NaN, problem.QCount).ToArray()), problem.QLengths);
        var lse = Tensor.Create(Enumerable.Repeat(float.NaN, problem.Batch * problem.HeadsQ * problem.SeqlenQ).ToArray(), problem.LseLengths);

        var state = FlashAttention.ForwardInto<T>(inputs.QTensor, inputs.KTensor, inputs.VTensor, output, lse, options, Ct);
        Assert.Equal(options.DropoutState, state);
        var expected = FlashAttention.Forward<T>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, Ct);

        var written = Precision<T>.Flatten(output);
        var writtenLse = Flat.Of(lse);
        for (int i = 0; i < written.Length; i++) Assert.False(double.IsNaN(written[i]), $"O[{i}] was not written. {context}");
        for (int i = 0; i < writtenLse.Length; i++) Assert.False(double.IsNaN(writtenLse[i]), $"LSE[{i}] was not written. {context}");
        Tolerance.AssertIdentical("O", written, Precision<T>.Flatten(expected.Output), context);
        Tolerance.AssertIdentical("LSE", writtenLse, Flat.Of(expected.LogSumExp), context);
    }

    [Fact]
    public void WritesIntoStridedOutputs()
    {
        // O laid out as (batch, heads, seqlen, d) in memory, seen through a (batch, seqlen, heads, d) span; LSE rows padded.
        var problem = new Problem(2, 33, 20, 3, 3, 16);
        var inputs = Inputs<float>.Create(problem);
        var oStore = Enumerable.Repeat(float.NaN, problem.QCount).ToArray();
        int s = problem.SeqlenQ, h = problem.HeadsQ, d = problem.HeadDim;
        var output = new TensorSpan<float>(oStore, 0, [problem.Batch, s, h, d], [h * s * d, d, s * d, 1]);
        int lseRow = s + 5;
        var lseStore = Enumerable.Repeat(float.NaN, problem.Batch * h * lseRow).ToArray();
        var lse = new TensorSpan<float>(lseStore, 0, [problem.Batch, h, s], [h * lseRow, lseRow, 1]);

        FlashAttention.ForwardInto<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, output, lse, cancellationToken: Ct);
        var expected = FlashAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, cancellationToken: Ct);
        var expectedO = Precision<float>.Flatten(expected.Output);
        var expectedLse = Flat.Of(expected.LogSumExp);
        for (int b = 0; b < problem.Batch; b++)
            for (int i = 0; i < s; i++)
                for (int head = 0; head < h; head++)
                {
                    for (int c = 0; c < d; c++)
                        Assert.Equal(expectedO[((b * s + i) * h + head) * d + c], oStore[((b * h + head) * s + i) * d + c]);
                    Assert.Equal(expectedLse[(b * h + head) * s + i], lseStore[(b * h + head) * lseRow + i]);
                }
        for (int b = 0; b < problem.Batch; b++)
            for (int head = 0; head < h; head++)
                for (int i = s; i < lseRow; i++)
                    Assert.True(float.IsNaN(lseStore[(b * h + head) * lseRow + i]), "ForwardInto wrote into the LSE padding");
    }
}
