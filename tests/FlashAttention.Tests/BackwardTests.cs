using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>dQ, dK, dV against the float64 reference's gradients, with the naive baseline's gradients setting the tolerance.</summary>
public sealed class BackwardTests
{
    public static TheoryData<Dtype, int, int, int, int, int, int> Shapes()
    {
        var data = new TheoryData<Dtype, int, int, int, int, int, int>();
        foreach (var dtype in Enum.GetValues<Dtype>())
        {
            data.Add(dtype, 1, 1, 1, 1, 1, 8);
            // One key and many rows: dQ = dK = 0 exactly (P = 1 whatever the scores). FA2 gets them as P * (dP - D), two dot
            // products summed in different orders, and dK sums that residue over all 80 rows; the naive baseline cancels it
            // exactly, so in fp32 no fixed floor covers it (it grows with seqlen_q). In fp16/bf16 output rounding dominates.
            if (dtype != Dtype.Fp32) data.Add(dtype, 1, 40, 1, 2, 1, 16);
            data.Add(dtype, 2, 113, 113, 2, 2, 59);
            data.Add(dtype, 1, 17, 200, 4, 2, 40);   // GQA 4:2, seqlen_q < seqlen_k
            data.Add(dtype, 1, 200, 17, 6, 1, 96);   // GQA 6:1, seqlen_q > seqlen_k
            data.Add(dtype, 1, 65, 70, 1, 1, 256);
            data.Add(dtype, 2, 33, 47, 2, 1, 111);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void GradientsMatchReference(Dtype dtype, int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim) =>
        DtypeDispatch.Backward(dtype, new Problem(batch, seqlenQ, seqlenK, headsQ, headsKv, headDim));

    [Theory]
    [InlineData(Dtype.Fp32, 113, 113)]
    [InlineData(Dtype.Fp16, 200, 40)]  // rows that see no key get zero gradients
    [InlineData(Dtype.Bf16, 40, 113)]
    public void Causal(Dtype dtype, int seqlenQ, int seqlenK) =>
        DtypeDispatch.Backward(dtype, new Problem(2, seqlenQ, seqlenK, 4, 2, 40), new AttentionOptions { Causal = true });

    [Theory]
    [InlineData(Dtype.Fp32, 20, 5)]
    [InlineData(Dtype.Fp16, -1, 7)]
    [InlineData(Dtype.Bf16, 33, -1)]
    public void Window(Dtype dtype, int left, int right) =>
        DtypeDispatch.Backward(dtype, new Problem(1, 150, 113, 2, 2, 40), new AttentionOptions { WindowLeft = left, WindowRight = right });

    [Theory]
    [InlineData(Dtype.Fp32)]
    [InlineData(Dtype.Fp16)]
    [InlineData(Dtype.Bf16)]
    public void Softcap(Dtype dtype) =>
        DtypeDispatch.Backward(dtype, new Problem(1, 90, 113, 2, 1, 48), new AttentionOptions { Softcap = 3f, SoftmaxScale = 0.8f });

    [Theory]
    [InlineData(Dtype.Fp32)]
    [InlineData(Dtype.Fp16)]
    [InlineData(Dtype.Bf16)]
    public void Alibi(Dtype dtype) =>
        DtypeDispatch.Backward(dtype, new Problem(2, 90, 70, 2, 2, 40),
            new AttentionOptions { AlibiSlopes = Tensor.Create(new[] { 0.3f, 0.02f, 0.5f, 0.125f }, [2, 2]), Causal = true });

    [Theory]
    [InlineData(Dtype.Fp32, 0.17f)]
    [InlineData(Dtype.Fp16, 0.5f)]
    [InlineData(Dtype.Bf16, 0.1f)]
    public void Dropout(Dtype dtype, float p) =>
        DtypeDispatch.Backward(dtype, new Problem(2, 77, 130, 4, 2, 40), new AttentionOptions { DropoutProbability = p });

    /// <summary>Every option at once, as far as flash-attn allows: softcap excludes dropout, so dropout takes its place in the second case.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void EverythingAtOnce(bool dropoutInsteadOfSoftcap) =>
        DtypeDispatch.Backward(Dtype.Fp32, new Problem(2, 100, 81, 4, 2, 24), new AttentionOptions
        {
            Causal = true, WindowLeft = 25, AlibiSlopes = Tensor.Create(new[] { 0.1f, 0.2f, 0.3f, 0.4f }, [4]), SoftmaxScale = 0.4f,
            Softcap = dropoutInsteadOfSoftcap ? 0f : 4f, DropoutProbability = dropoutInsteadOfSoftcap ? 0.25f : 0f,
        });
}
