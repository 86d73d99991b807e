namespace FlashAttn.Tests;

/// <summary>Bad input is rejected before any work with an ArgumentException naming the argument, and nothing is written.</summary>
public sealed class ValidationTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    private static Tensor<float> Make(params nint[] lengths)
    {
        long count = 1;
        foreach (var n in lengths) count *= n;
        var data = new float[count];
        for (int i = 0; i < data.Length; i++) data[i] = 0.5f + (i % 7) * 0.1f;
        return Tensor.Create(data, lengths);
    }

    private static void Rejects(string paramName, Action action)
    {
        var exception = Assert.ThrowsAny<ArgumentException>(action);
        Assert.Equal(paramName, exception.ParamName);
        Assert.False(string.IsNullOrWhiteSpace(exception.Message));
    }

    private static readonly Tensor<float> Q = Make(2, 5, 4, 8), K = Make(2, 7, 2, 8), V = Make(2, 7, 2, 8);

    [Fact]
    public void WrongRank()
    {
        Rejects("q", () => FlashAttention.Forward<float>(Make(5, 4, 8), K, V, cancellationToken: Ct));
        Rejects("k", () => FlashAttention.Forward<float>(Q, Make(2, 7, 2, 8, 1), V, cancellationToken: Ct));
        Rejects("v", () => FlashAttention.Forward<float>(Q, K, Make(14, 2, 8), cancellationToken: Ct));
    }

    [Fact]
    public void KeyValueShapeMismatch() => Rejects("v", () => FlashAttention.Forward<float>(Q, K, Make(2, 6, 2, 8), cancellationToken: Ct));

    [Fact]
    public void BatchMismatch() => Rejects("k", () => FlashAttention.Forward<float>(Q, Make(3, 7, 2, 8), Make(3, 7, 2, 8), cancellationToken: Ct));

    [Theory]
    [InlineData(0)]
    [InlineData(257)]
    public void HeadDimOutOfRange(int headDim) =>
        Rejects("q", () => FlashAttention.Forward<float>(Make(1, 3, 2, headDim), Make(1, 3, 2, headDim), Make(1, 3, 2, headDim), cancellationToken: Ct));

    [Fact]
    public void HeadDimMismatch()
    {
        Rejects("k", () => FlashAttention.Forward<float>(Q, Make(2, 7, 2, 16), Make(2, 7, 2, 16), cancellationToken: Ct));
        // v must match k's shape, so a v head dim that differs from q's is reported against v.
        Rejects("v", () => FlashAttention.Forward<float>(Q, K, Make(2, 7, 2, 9), cancellationToken: Ct));
    }

    [Fact]
    public void HeadsKvMustDivideHeadsQ() =>
        Rejects("k", () => FlashAttention.Forward<float>(Q, Make(2, 7, 3, 8), Make(2, 7, 3, 8), cancellationToken: Ct));

    [Fact]
    public void LastDimensionMustBeContiguous()
    {
        var wide = new float[2 * 5 * 4 * 8 * 2];
        Array.Fill(wide, 0.25f);
        Rejects("q", () => FlashAttention.Forward(new ReadOnlyTensorSpan<float>(wide, 0, [2, 5, 4, 8], [5 * 4 * 16, 4 * 16, 16, 2]), K, V,
            cancellationToken: Ct));
        Rejects("k", () => FlashAttention.Forward(Q, new ReadOnlyTensorSpan<float>(wide, 0, [2, 7, 2, 8], [7 * 2 * 16, 2 * 16, 16, 2]), V,
            cancellationToken: Ct));
    }

    [Theory]
    [InlineData(-0.1f)]
    [InlineData(1.0f)]
    [InlineData(float.NaN)]
    public void DropoutOutOfRange(float p) =>
        Rejects("options.DropoutProbability", () => FlashAttention.Forward<float>(Q, K, V, new AttentionOptions { DropoutProbability = p }, Ct));

    [Theory]
    [InlineData(float.NaN)]
    [InlineData(float.PositiveInfinity)]
    [InlineData(0f)]
    [InlineData(-0.5f)]
    public void BadScale(float scale) =>
        Rejects("options.SoftmaxScale", () => FlashAttention.Forward<float>(Q, K, V, new AttentionOptions { SoftmaxScale = scale }, Ct));

    [Theory]
    [InlineData(-1f)]
    [InlineData(float.NaN)]
    public void BadSoftcap(float cap) =>
        Rejects("options.Softcap", () => FlashAttention.Forward<float>(Q, K, V, new AttentionOptions { Softcap = cap }, Ct));

    [Fact]
    public void SoftcapWithDropoutIsRejectedAsFlashAttnDoes() =>
        Rejects("options.Softcap", () => FlashAttention.Forward<float>(Q, K, V, new AttentionOptions { Softcap = 5f, DropoutProbability = 0.1f }, Ct));

    [Fact]
    public void WindowBelowMinusOne()
    {
        Rejects("options.WindowLeft", () => FlashAttention.Forward<float>(Q, K, V, new AttentionOptions { WindowLeft = -2 }, Ct));
        Rejects("options.WindowRight", () => FlashAttention.Forward<float>(Q, K, V, new AttentionOptions { WindowRight = -2 }, Ct));
    }

    [Fact]
    public void AlibiWrongShape()
    {
        Rejects("options.AlibiSlopes", () => FlashAttention.Forward<float>(Q, K, V, new AttentionOptions { AlibiSlopes = Make(2) }, Ct));
        Rejects("options.AlibiSlopes", () => FlashAttention.Forward<float>(Q, K, V, new AttentionOptions { AlibiSlopes = Make(3, 4) }, Ct));
        Rejects("options.AlibiSlopes", () => FlashAttention.Forward<float>(Q, K, V, new AttentionOptions { AlibiSlopes = Make(2, 4, 1) }, Ct));
    }

    [Fact]
    public void UnsupportedElementType()
    {
        var q = Tensor.Create(new double[2 * 5 * 4 * 8], [2, 5, 4, 8]);
        var kv = Tensor.Create(new double[2 * 7 * 2 * 8], [2, 7, 2, 8]);
        Rejects("q", () => FlashAttention.Forward<double>(q, kv, kv, cancellationToken: Ct));
    }

    [Fact]
    public void PackedTensorsWithTheWrongPartCount()
    {
        Rejects("qkv", () => FlashAttention.ForwardQkvPacked<float>(Make(2, 5, 2, 4, 8), cancellationToken: Ct));
        Rejects("kv", () => FlashAttention.ForwardKvPacked<float>(Q, Make(2, 7, 3, 2, 8), cancellationToken: Ct));
        Rejects("qkv", () => FlashAttention.ForwardVarlenQkvPacked<float>(Make(10, 2, 4, 8), [0, 10], 10, cancellationToken: Ct));
    }

    [Fact]
    public void VarlenOffsets()
    {
        Tensor<float> q = Make(10, 4, 8), k = Make(12, 2, 8), v = Make(12, 2, 8);
        Rejects("cuSeqlensQ", () => FlashAttention.ForwardVarlen<float>(q, k, v, [1, 4, 10], [0, 6, 12], 9, 6, cancellationToken: Ct));
        Rejects("cuSeqlensQ", () => FlashAttention.ForwardVarlen<float>(q, k, v, [0, 6, 4, 10], [0, 4, 6, 12], 6, 6, cancellationToken: Ct));
        Rejects("cuSeqlensK", () => FlashAttention.ForwardVarlen<float>(q, k, v, [0, 4, 10], [0, 6, 11], 6, 6, cancellationToken: Ct));
        Rejects("cuSeqlensQ", () => FlashAttention.ForwardVarlen<float>(q, k, v, [0, 4, 9], [0, 6, 12], 6, 6, cancellationToken: Ct));
        Rejects("maxSeqlenQ", () => FlashAttention.ForwardVarlen<float>(q, k, v, [0, 4, 10], [0, 6, 12], 5, 6, cancellationToken: Ct));
        Rejects("maxSeqlenK", () => FlashAttention.ForwardVarlen<float>(q, k, v, [0, 4, 10], [0, 6, 12], 6, 5, cancellationToken: Ct));
        Rejects("cuSeqlensK", () => FlashAttention.ForwardVarlen<float>(q, k, v, [0, 4, 10], [0, 12], 6, 12, cancellationToken: Ct));
    }

    [Fact]
    public void BackwardArguments()
    {
        var forward = FlashAttention.Forward<float>(Q, K, V, cancellationToken: Ct);
        var dOut = Make(2, 5, 4, 8);
        Rejects("dOut", () => FlashAttention.Backward<float>(Make(2, 5, 4, 7), Q, K, V, forward.Output, forward.LogSumExp, cancellationToken: Ct));
        Rejects("output", () => FlashAttention.Backward<float>(dOut, Q, K, V, Make(2, 5, 3, 8), forward.LogSumExp, cancellationToken: Ct));
        Rejects("logSumExp", () => FlashAttention.Backward<float>(dOut, Q, K, V, forward.Output, Make(2, 5, 4), cancellationToken: Ct));
        Rejects("logSumExp", () => FlashAttention.Backward<float>(dOut, Q, K, V, forward.Output, Make(2, 4, 5, 1), cancellationToken: Ct));
        Rejects("dropoutState", () => FlashAttention.Backward<float>(dOut, Q, K, V, forward.Output, forward.LogSumExp,
            new AttentionOptions { DropoutProbability = 0.1f }, cancellationToken: Ct));
        Rejects("logSumExp", () => FlashAttention.BackwardVarlen<float>(Make(10, 4, 8), Make(10, 4, 8), Make(12, 2, 8), Make(12, 2, 8),
            Make(10, 4, 8), Make(4, 12), [0, 4, 10], [0, 6, 12], 6, 6, cancellationToken: Ct));
    }

    [Fact]
    public void ForwardIntoWritesNothingOnRejection()
    {
        var output = Tensor.Create(Enumerable.Repeat(float.NaN, 2 * 5 * 4 * 8).ToArray(), [2, 5, 4, 8]);
        var lse = Tensor.Create(Enumerable.Repeat(float.NaN, 2 * 4 * 5).ToArray(), [2, 4, 5]);
        Rejects("options.WindowLeft", () => FlashAttention.ForwardInto<float>(Q, K, V, output, lse, new AttentionOptions { WindowLeft = -3 }, Ct));
        Rejects("v", () => FlashAttention.ForwardInto<float>(Q, K, Make(2, 7, 2, 4), output, lse, cancellationToken: Ct));
        Rejects("logSumExp", () => FlashAttention.ForwardInto<float>(Q, K, V, output, Tensor.Create(new float[40], [2, 5, 4]), cancellationToken: Ct));
        Rejects("output", () => FlashAttention.ForwardInto<float>(Q, K, V, Tensor.Create(new float[320], [2, 5, 8, 4]), lse, cancellationToken: Ct));
        Rejects("options", () => FlashAttention.ForwardInto<float>(Q, K, V, output, lse, new AttentionOptions { ReturnProbabilities = true }, Ct));
        var o = new float[output.FlattenedLength];
        output.FlattenTo(o);
        var l = new float[lse.FlattenedLength];
        lse.FlattenTo(l);
        Assert.All(o, x => Assert.True(float.IsNaN(x), "output written on rejection"));
        Assert.All(l, x => Assert.True(float.IsNaN(x), "logSumExp written on rejection"));
    }
}
