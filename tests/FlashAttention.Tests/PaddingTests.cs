using System.Buffers;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>
/// flash-attn's bert_padding helpers on the host: Unpad gathers the real tokens in mask order (holes anywhere), Pad puts
/// them back with zeros elsewhere, and varlen attention over the unpadded tokens equals each sequence run on its own.
/// </summary>
public sealed class PaddingTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    // Holes anywhere: a gap, an empty row, left padding, a full row.
    private static readonly bool[,] HoleyMask =
    {
        { true, false, true, true, false },
        { false, false, false, false, false },
        { false, true, true, true, true },
        { true, true, true, true, true },
    };

    private static Tensor<bool> MaskTensor(bool[,] mask)
    {
        int batch = mask.GetLength(0), seqlen = mask.GetLength(1);
        var flat = new bool[batch * seqlen];
        for (int b = 0; b < batch; b++)
            for (int s = 0; s < seqlen; s++)
                flat[b * seqlen + s] = mask[b, s];
        return Tensor.Create(flat, [batch, seqlen]);
    }

    private static bool[,] RandomMask(TestRandom random, int batch, int seqlen)
    {
        var mask = new bool[batch, seqlen];
        for (int b = 0; b < batch; b++)
            for (int s = 0; s < seqlen; s++)
                mask[b, s] = b switch { 0 => false, 1 => true, _ => random.Random.NextDouble() < 0.6 };
        return mask;
    }

    private static float[] Values(Tensor<float> tensor)
    {
        var flat = new float[tensor.FlattenedLength];
        tensor.FlattenTo(flat);
        return flat;
    }

    private static int Product(nint[] lengths)
    {
        int count = 1;
        foreach (nint n in lengths) count *= (int)n;
        return count;
    }

    [Fact]
    public void IndicesAndCumulativeSeqlensFollowTheMask()
    {
        var random = new TestRandom();
        float[] data = random.Normal(4 * 5 * 2 * 3);
        var padded = Tensor.Create(data, [4, 5, 2, 3]);

        var batch = VarlenPadding.Unpad<float>(padded, MaskTensor(HoleyMask));

        Assert.Equal([0, 2, 3, 11, 12, 13, 14, 15, 16, 17, 18, 19], batch.Indices);
        Assert.Equal([0, 3, 3, 7, 12], batch.CumulativeSeqlens);
        Assert.Equal([3, 0, 4, 5], batch.Seqlens);
        Assert.Equal(5, batch.MaxSeqlen);
        Assert.Equal(12, batch.TotalTokens);
        Assert.Equal((4, 5), (batch.Batch, batch.Seqlen));
        Assert.Equal([12, 2, 3], batch.Unpadded.Lengths.ToArray());
        float[] tokens = Values(batch.Unpadded);
        for (int t = 0; t < batch.TotalTokens; t++)
            Assert.Equal(data.AsSpan(batch.Indices[t] * 6, 6), tokens.AsSpan(t * 6, 6));
    }

    [Theory]
    [InlineData(new int[0])]
    [InlineData(new[] { 7 })]
    [InlineData(new[] { 3, 5 })]
    public void PadOfUnpadKeepsRealTokensAndZerosThePadding(int[] rest)
    {
        var random = new TestRandom();
        int batchSize = 5, seqlen = 9;
        nint[] lengths = [batchSize, seqlen, .. rest.Select(n => (nint)n)];
        float[] data = random.Normal(Product(lengths));
        bool[,] mask = RandomMask(random, batchSize, seqlen);

        var batch = VarlenPadding.Unpad<float>(Tensor.Create(data, lengths), MaskTensor(mask));
        var repadded = batch.Pad<float>(batch.Unpadded);
        var viaIndices = VarlenPadding.Pad<float>(batch.Unpadded, batch.Indices, batchSize, seqlen);

        Assert.Equal(lengths, repadded.Lengths.ToArray());
        int row = Product([.. rest.Select(n => (nint)n)]);
        float[] actual = Values(repadded);
        for (int position = 0; position < batchSize * seqlen; position++)
        {
            bool real = mask[position / seqlen, position % seqlen];
            for (int e = 0; e < row; e++)
                Assert.True(actual[position * row + e] == (real ? data[position * row + e] : 0f),
                    $"position {position} element {e} (real: {real}) [{random}]");
        }
        Assert.Equal(actual, Values(viaIndices));
    }

    [Fact]
    public void StridedInputsAreReadThroughTheirStrides()
    {
        var random = new TestRandom();
        // A (3, 4, 2, 6) view with a gap after each token's row: padded is a slice of a wider tensor.
        float[] wide = random.Normal(3 * 4 * 2 * 8);
        var wideTensor = Tensor.Create(wide, [3, 4, 2, 8]);
        ReadOnlyTensorSpan<float> padded = wideTensor.AsReadOnlyTensorSpan().Slice([NRange.All, NRange.All, NRange.All, new NRange(1, 7)]);
        bool[,] mask = RandomMask(random, 3, 4);

        var batch = VarlenPadding.Unpad(padded, MaskTensor(mask));

        float[] tokens = Values(batch.Unpadded);
        for (int t = 0; t < batch.TotalTokens; t++)
            for (int h = 0; h < 2; h++)
                for (int e = 0; e < 6; e++)
                    Assert.Equal(wide[(batch.Indices[t] * 2 + h) * 8 + 1 + e], tokens[(t * 2 + h) * 6 + e]);
    }

    [Fact]
    public void EmptyBatchAndAllPaddingGiveNoTokens()
    {
        var none = VarlenPadding.Unpad<float>(Tensor.Create(new float[0], [0, 6, 4]), Tensor.Create(new bool[0], [0, 6]));
        Assert.Empty(none.Indices);
        Assert.Equal([0], none.CumulativeSeqlens);
        Assert.Equal(0, none.MaxSeqlen);
        Assert.Equal([0, 4], none.Unpadded.Lengths.ToArray());

        var random = new TestRandom();
        var allPadding = VarlenPadding.Unpad<float>(Tensor.Create(random.Normal(2 * 3 * 4), [2, 3, 4]), Tensor.Create(new bool[6], [2, 3]));
        Assert.Empty(allPadding.Indices);
        Assert.Equal([0, 0, 0], allPadding.CumulativeSeqlens);
        Assert.Equal(0, allPadding.MaxSeqlen);
        var padded = allPadding.Pad<float>(allPadding.Unpadded);
        Assert.Equal([2, 3, 4], padded.Lengths.ToArray());
        Assert.All(Values(padded), x => Assert.Equal(0f, x));
    }

    [Fact]
    public void MaskFromLengthsIsRightPaddedAndAgreesWithCumulativeSeqlens()
    {
        int[] seqlens = [2, 0, 3];
        var mask = VarlenPadding.MaskFromLengths(seqlens, 3);
        var flat = new bool[9];
        mask.FlattenTo(flat);
        Assert.Equal([true, true, false, false, false, false, true, true, true], flat);

        var batch = VarlenPadding.Unpad<float>(Tensor.Create(new TestRandom().Normal(9), [3, 3]), mask);
        Assert.Equal([0, 2, 2, 5], VarlenPadding.CumulativeSeqlens(seqlens));
        Assert.Equal(VarlenPadding.CumulativeSeqlens(seqlens), batch.CumulativeSeqlens);
        Assert.Equal(seqlens, batch.Seqlens);
    }

    public static TheoryData<Dtype, bool> AttentionCases() => new()
    {
        { Dtype.Fp32, false }, { Dtype.Fp32, true }, { Dtype.Bf16, false }, { Dtype.Fp16, true },
    };

    /// <summary>The real use: unpad q, k, v with one mask, run varlen attention, pad the output. Each sequence must equal
    /// fixed-length attention over its own real tokens alone, and every padded position must be zero.</summary>
    [Theory]
    [MemberData(nameof(AttentionCases))]
    public void VarlenAttentionOverUnpaddedTokensEqualsEachSequenceAlone(Dtype dtype, bool causal)
    {
        switch (dtype)
        {
            case Dtype.Fp32: CheckAttention<float>(causal); break;
            case Dtype.Fp16: CheckAttention<Half>(causal); break;
            default: CheckAttention<BFloat16>(causal); break;
        }
    }

    private static void CheckAttention<T>(bool causal) where T : unmanaged
    {
        var random = new TestRandom();
        int batchSize = 5, seqlen = 37, hq = 4, hkv = 2, d = 40;
        bool[,] mask = RandomMask(random, batchSize, seqlen);
        var maskTensor = MaskTensor(mask);
        T[] q = Precision<T>.FromFloats(random.Normal(batchSize * seqlen * hq * d));
        T[] k = Precision<T>.FromFloats(random.Normal(batchSize * seqlen * hkv * d));
        T[] v = Precision<T>.FromFloats(random.Normal(batchSize * seqlen * hkv * d));
        var options = new AttentionOptions { Causal = causal };
        string context = $"[{Precision<T>.Name} causal={causal} {random}]";

        var qu = VarlenPadding.Unpad<T>(Tensor.Create(q, [batchSize, seqlen, hq, d]), maskTensor);
        var ku = VarlenPadding.Unpad<T>(Tensor.Create(k, [batchSize, seqlen, hkv, d]), maskTensor);
        var vu = VarlenPadding.Unpad<T>(Tensor.Create(v, [batchSize, seqlen, hkv, d]), maskTensor);
        var result = FlashAttention.ForwardVarlen<T>(qu.Unpadded, ku.Unpadded, vu.Unpadded, qu.CumulativeSeqlens, ku.CumulativeSeqlens,
            qu.MaxSeqlen, ku.MaxSeqlen, options, Ct);
        double[] output = Precision<T>.Flatten(qu.Pad<T>(result.Output));

        int qRow = hq * d, kvRow = hkv * d;
        for (int b = 0; b < batchSize; b++)
        {
            int[] positions = [.. Enumerable.Range(b * seqlen, seqlen).Where(p => mask[b, p - b * seqlen])];
            for (int s = 0; s < seqlen; s++)
                if (!mask[b, s])
                    Assert.All(output.AsSpan((b * seqlen + s) * qRow, qRow).ToArray(), x => Assert.Equal(0.0, x));
            if (positions.Length == 0)
                continue;
            T[] Gather(T[] source, int row) => [.. positions.SelectMany(p => source.Skip(p * row).Take(row))];
            var alone = FlashAttention.Forward<T>(Tensor.Create(Gather(q, qRow), [1, positions.Length, hq, d]),
                Tensor.Create(Gather(k, kvRow), [1, positions.Length, hkv, d]), Tensor.Create(Gather(v, kvRow), [1, positions.Length, hkv, d]),
                options, Ct);
            double[] expected = Precision<T>.Flatten(alone.Output);
            double bound = 4 * Precision<T>.FloorUnit * Math.Max(1, expected.Max(Math.Abs));
            for (int i = 0; i < positions.Length; i++)
                for (int e = 0; e < qRow; e++)
                {
                    double actual = output[positions[i] * qRow + e], want = expected[i * qRow + e];
                    Assert.True(Math.Abs(actual - want) <= bound,
                        $"sequence {b} token {i} element {e}: {actual} vs {want} alone (bound {bound}) {context}");
                }
        }
    }

    private static void Rejects(string paramName, Action action)
    {
        var exception = Assert.ThrowsAny<ArgumentException>(action);
        Assert.Equal(paramName, exception.ParamName);
        Assert.False(string.IsNullOrWhiteSpace(exception.Message));
    }

    [Fact]
    public void BadArgumentsNameTheArgument()
    {
        var padded = Tensor.Create(new TestRandom().Normal(2 * 3 * 4), [2, 3, 4]);
        var mask = Tensor.Create(new[] { true, false, true, true, true, false }, [2, 3]);

        Rejects("attentionMask", () => VarlenPadding.Unpad<float>(padded, Tensor.Create(new bool[8], [2, 4])));
        Rejects("attentionMask", () => VarlenPadding.Unpad<float>(padded, Tensor.Create(new bool[6], [6])));
        Rejects("padded", () => VarlenPadding.Unpad<float>(Tensor.Create(new float[6], [6]), mask));

        var tokens = VarlenPadding.Unpad<float>(padded, mask).Unpadded; // 4 tokens
        Rejects("indices", () => VarlenPadding.Pad<float>(tokens, [0, 2, 3], 2, 3));
        Rejects("indices", () => VarlenPadding.Pad<float>(tokens, [0, 2, 3, 6], 2, 3));
        Rejects("indices", () => VarlenPadding.Pad<float>(tokens, [0, -1, 3, 4], 2, 3));
        Rejects("indices", () => VarlenPadding.Pad<float>(tokens, [0, 2, 2, 4], 2, 3));
        Rejects("batch", () => VarlenPadding.Pad<float>(tokens, [0, 2, 3, 4], -1, 3));
        Rejects("seqlen", () => VarlenPadding.Pad<float>(tokens, [0, 2, 3, 4], 2, -3));

        Rejects("seqlens", () => VarlenPadding.MaskFromLengths([2, 4], 3));
        Rejects("seqlens", () => VarlenPadding.MaskFromLengths([-1], 3));
        Rejects("seqlen", () => VarlenPadding.MaskFromLengths([1], -1));
        Rejects("seqlens", () => VarlenPadding.CumulativeSeqlens([3, -2]));
        Rejects("seqlens", () => VarlenPadding.CumulativeSeqlens([int.MaxValue, 1]));
    }
}
