using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>Causal and sliding-window masks (bottom-right aligned) against the reference, and rows that see no key.</summary>
public sealed class MaskTests
{
    public static TheoryData<Dtype, int, int, int, int> CausalShapes()
    {
        var data = new TheoryData<Dtype, int, int, int, int>();
        foreach (var dtype in Enum.GetValues<Dtype>())
        {
            data.Add(dtype, 113, 113, 2, 59);
            data.Add(dtype, 17, 200, 1, 96);   // seqlen_q < seqlen_k: the diagonal moves right
            data.Add(dtype, 200, 17, 2, 40);   // seqlen_q > seqlen_k: the first rows see nothing
            data.Add(dtype, 1, 113, 1, 111);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(CausalShapes))]
    public void CausalMatchesReference(Dtype dtype, int seqlenQ, int seqlenK, int heads, int headDim) =>
        DtypeDispatch.Forward(dtype, new Problem(2, seqlenQ, seqlenK, heads, 1, headDim), new AttentionOptions { Causal = true });

    public static TheoryData<Dtype, int, int, int, int, bool> Windows()
    {
        var data = new TheoryData<Dtype, int, int, int, int, bool>();
        foreach (var dtype in Enum.GetValues<Dtype>())
        {
            data.Add(dtype, 113, 113, 16, 8, false);
            data.Add(dtype, 113, 113, -1, 3, false);  // right-only window
            data.Add(dtype, 113, 113, 20, -1, false); // left-only window
            data.Add(dtype, 200, 17, 5, 0, false);    // seqlen_q > seqlen_k
            data.Add(dtype, 17, 200, 40, 70, false);  // seqlen_q < seqlen_k, window wider than a block
            data.Add(dtype, 113, 200, 0, 0, false);   // the diagonal only
            data.Add(dtype, 200, 113, 30, -1, true);  // causal with a left window
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Windows))]
    public void WindowMatchesReference(Dtype dtype, int seqlenQ, int seqlenK, int left, int right, bool causal) =>
        DtypeDispatch.Forward(dtype, new Problem(1, seqlenQ, seqlenK, 2, 2, 40),
            new AttentionOptions { WindowLeft = left, WindowRight = right, Causal = causal });

    [Theory]
    [InlineData(Dtype.Fp32)]
    [InlineData(Dtype.Fp16)]
    [InlineData(Dtype.Bf16)]
    public void RowsThatSeeNoKeyGiveZeroOutputAndInfiniteLse(Dtype dtype)
    {
        // Causal with seqlen_q = 90 > seqlen_k = 20: query i sees keys j <= i - 70, so rows 0..69 see nothing.
        // Window (left 2, right -1) with seqlen_q < seqlen_k would hide nothing; use a left window on top of causal too.
        switch (dtype)
        {
            case Dtype.Fp32: Check<float>(); break;
            case Dtype.Fp16: Check<Half>(); break;
            default: Check<BFloat16>(); break;
        }
    }

    private static void Check<T>() where T : unmanaged
    {
        var problem = new Problem(2, 90, 20, 2, 1, 24);
        var options = new AttentionOptions { Causal = true };
        var result = AttentionCheck.Forward<T>(problem, options); // also checks the visible rows against the reference
        var o = Precision<T>.Flatten(result.Output);
        var lse = Flat.Of(result.LogSumExp);
        for (int b = 0; b < problem.Batch; b++)
            for (int h = 0; h < problem.HeadsQ; h++)
                for (int i = 0; i < problem.SeqlenQ; i++)
                {
                    bool empty = i < problem.SeqlenQ - problem.SeqlenK;
                    double l = lse[(b * problem.HeadsQ + h) * problem.SeqlenQ + i];
                    Assert.True(empty ? double.IsPositiveInfinity(l) : double.IsFinite(l), $"LSE[{b},{h},{i}] = {l}");
                    if (!empty) continue;
                    for (int c = 0; c < problem.HeadDim; c++)
                    {
                        double x = o[((b * problem.SeqlenQ + i) * problem.HeadsQ + h) * problem.HeadDim + c];
                        Assert.True(x == 0, $"O[{b},{i},{h},{c}] = {x}, expected 0 for a row that sees no key");
                    }
                }
    }

    [Fact]
    public void WindowThatHidesAWholeRowRange()
    {
        // left = right = 0 with seqlen_q = 50 > seqlen_k = 10: only rows 40..49 have their diagonal key inside [0, 10).
        var problem = new Problem(1, 50, 10, 1, 1, 16);
        var result = AttentionCheck.Forward<float>(problem, new AttentionOptions { WindowLeft = 0, WindowRight = 0 });
        var lse = Flat.Of(result.LogSumExp);
        for (int i = 0; i < 50; i++)
            Assert.True(i < 40 ? double.IsPositiveInfinity(lse[i]) : double.IsFinite(lse[i]), $"LSE[{i}] = {lse[i]}");
    }
}
