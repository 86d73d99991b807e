using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>Non-dense inputs (other strides honoured, headdim contiguous) give the same results as dense copies.</summary>
public sealed class StridedInputTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    /// <summary>Stores a dense (b, s, h, d) array as (b, h, s, d) with each head row padded by <paramref name="pad"/> elements,
    /// starting at <paramref name="start"/> in a larger buffer, and returns the buffer and the strides of the (b, s, h, d) view.</summary>
    private static (T[] Buffer, nint[] Strides) HeadsMajor<T>(T[] dense, int b, int s, int h, int d, int pad, int start, T fill)
    {
        int row = d + pad;
        var buffer = Enumerable.Repeat(fill, start + b * h * s * row + 7).ToArray();
        for (int bi = 0; bi < b; bi++)
            for (int i = 0; i < s; i++)
                for (int hi = 0; hi < h; hi++)
                    Array.Copy(dense, ((bi * s + i) * h + hi) * d, buffer, start + ((bi * h + hi) * s + i) * row, d);
        return (buffer, [h * s * row, row, s * row, 1]);
    }

    [Theory]
    [InlineData(Dtype.Fp32)]
    [InlineData(Dtype.Bf16)]
    public void StridedEqualsDense(Dtype dtype)
    {
        switch (dtype)
        {
            case Dtype.Fp32: Check<float>(); break;
            default: Check<BFloat16>(); break;
        }
    }

    private static void Check<T>() where T : unmanaged
    {
        var problem = new Problem(2, 70, 45, 4, 2, 24);
        var inputs = Inputs<T>.Create(problem);
        var options = new AttentionOptions { Causal = true, Softcap = 4f };
        string context = AttentionCheck.Context<T>(problem, options, inputs.Random);
        T poison = Precision<T>.FromFloat(float.NaN);
        var (qb, qs) = HeadsMajor(inputs.Q, problem.Batch, problem.SeqlenQ, problem.HeadsQ, problem.HeadDim, pad: 3, start: 5, poison);
        var (kb, ks) = HeadsMajor(inputs.K, problem.Batch, problem.SeqlenK, problem.HeadsKv, problem.HeadDim, pad: 0, start: 1, poison);
        var (vb, vs) = HeadsMajor(inputs.V, problem.Batch, problem.SeqlenK, problem.HeadsKv, problem.HeadDim, pad: 8, start: 0, poison);
        var (db, ds) = HeadsMajor(inputs.DOut, problem.Batch, problem.SeqlenQ, problem.HeadsQ, problem.HeadDim, pad: 1, start: 2, poison);
        var q = new ReadOnlyTensorSpan<T>(qb, 5, problem.QLengths, qs);
        var k = new ReadOnlyTensorSpan<T>(kb, 1, problem.KvLengths, ks);
        var v = new ReadOnlyTensorSpan<T>(vb, 0, problem.KvLengths, vs);
        var dOut = new ReadOnlyTensorSpan<T>(db, 2, problem.QLengths, ds);

        var strided = FlashAttention.Forward(q, k, v, options, Ct);
        var dense = FlashAttention.Forward<T>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, Ct);
        Tolerance.AssertIdentical("O", Precision<T>.Flatten(strided.Output), Precision<T>.Flatten(dense.Output), context);
        Tolerance.AssertIdentical("LSE", Flat.Of(strided.LogSumExp), Flat.Of(dense.LogSumExp), context);

        // Backward with strided q, k, v, dO and a strided copy of the output.
        var (ob, os) = HeadsMajor(Precision<T>.FromFloats(Array.ConvertAll(Precision<T>.Flatten(dense.Output), x => (float)x)),
            problem.Batch, problem.SeqlenQ, problem.HeadsQ, problem.HeadDim, pad: 2, start: 3, poison);
        var o = new ReadOnlyTensorSpan<T>(ob, 3, problem.QLengths, os);
        var stridedGrads = FlashAttention.Backward(dOut, q, k, v, o, dense.LogSumExp, options, cancellationToken: Ct);
        var denseGrads = FlashAttention.Backward<T>(inputs.DOutTensor, inputs.QTensor, inputs.KTensor, inputs.VTensor, dense.Output, dense.LogSumExp,
            options, cancellationToken: Ct);
        Tolerance.AssertIdentical("dQ", Precision<T>.Flatten(stridedGrads.DQ), Precision<T>.Flatten(denseGrads.DQ), context);
        Tolerance.AssertIdentical("dK", Precision<T>.Flatten(stridedGrads.DK), Precision<T>.Flatten(denseGrads.DK), context);
        Tolerance.AssertIdentical("dV", Precision<T>.Flatten(stridedGrads.DV), Precision<T>.Flatten(denseGrads.DV), context);
    }

    [Fact]
    public void BroadcastKeyValueHeadsViaZeroStride()
    {
        // k and v with one stored head seen as 2 heads through a zero head stride: same as a dense copy with the head duplicated.
        var random = new TestRandom();
        int b = 2, s = 30, d = 16;
        var kOne = random.Normal(b * s * d);
        var vOne = random.Normal(b * s * d);
        var q = Tensor.Create(random.Normal(b * s * 4 * d), [b, s, 4, d]);
        var k = new ReadOnlyTensorSpan<float>(kOne, 0, [b, s, 2, d], [s * d, d, 0, 1]);
        var v = new ReadOnlyTensorSpan<float>(vOne, 0, [b, s, 2, d], [s * d, d, 0, 1]);
        var kDense = Tensor.Create(Duplicate(kOne, b * s, d), [b, s, 2, d]);
        var vDense = Tensor.Create(Duplicate(vOne, b * s, d), [b, s, 2, d]);
        var broadcast = FlashAttention.Forward(q, k, v, cancellationToken: Ct);
        var dense = FlashAttention.Forward<float>(q, kDense, vDense, cancellationToken: Ct);
        Tolerance.AssertIdentical("O", Precision<float>.Flatten(broadcast.Output), Precision<float>.Flatten(dense.Output), $"[{random}]");
    }

    private static float[] Duplicate(float[] rows, int count, int d)
    {
        var result = new float[count * 2 * d];
        for (int r = 0; r < count; r++)
        {
            Array.Copy(rows, r * d, result, (r * 2) * d, d);
            Array.Copy(rows, r * d, result, (r * 2 + 1) * d, d);
        }
        return result;
    }
}
