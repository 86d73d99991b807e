using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>Packed qkv and packed kv, forward and backward, give exactly the separate-tensor results.</summary>
public sealed class PackedTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData(Dtype.Fp32, false)]
    [InlineData(Dtype.Fp16, true)]
    [InlineData(Dtype.Bf16, false)]
    public void QkvPackedEqualsSeparate(Dtype dtype, bool causal)
    {
        var options = new AttentionOptions { Causal = causal, DropoutProbability = 0.1f, DropoutState = new TestRandom().NextDropoutState() };
        switch (dtype)
        {
            case Dtype.Fp32: QkvPacked<float>(options); break;
            case Dtype.Fp16: QkvPacked<Half>(options); break;
            default: QkvPacked<BFloat16>(options); break;
        }
    }

    private static void QkvPacked<T>(AttentionOptions options) where T : unmanaged
    {
        var random = new TestRandom();
        int b = 2, s = 77, h = 3, d = 40;
        var qkv = Precision<T>.FromFloats(random.Normal(b * s * 3 * h * d));
        var dOut = Precision<T>.FromFloats(random.Normal(b * s * h * d));
        var problem = Problem.Square(b, s, h, d);
        var (q, k, v) = (Slice(qkv, b * s, 3, 0, h * d), Slice(qkv, b * s, 3, 1, h * d), Slice(qkv, b * s, 3, 2, h * d));
        string context = AttentionCheck.Context<T>(problem, options, random);

        var packedTensor = Tensor.Create(qkv, [b, s, 3, h, d]);
        var packed = FlashAttention.ForwardQkvPacked<T>(packedTensor, options, Ct);
        Tensor<T> qt = Tensor.Create(q, problem.QLengths), kt = Tensor.Create(k, problem.KvLengths), vt = Tensor.Create(v, problem.KvLengths);
        var separate = FlashAttention.Forward<T>(qt, kt, vt, options, Ct);
        Tolerance.AssertIdentical("O", Precision<T>.Flatten(packed.Output), Precision<T>.Flatten(separate.Output), context);
        Tolerance.AssertIdentical("LSE", Flat.Of(packed.LogSumExp), Flat.Of(separate.LogSumExp), context);

        var dOutTensor = Tensor.Create(dOut, problem.QLengths);
        var packedGrads = FlashAttention.BackwardQkvPacked<T>(dOutTensor, packedTensor, packed.Output, packed.LogSumExp, options, packed.DropoutState, Ct);
        var grads = FlashAttention.Backward<T>(dOutTensor, qt, kt, vt, separate.Output, separate.LogSumExp, options, separate.DropoutState, Ct);
        Assert.Equal([b, s, 3, h, d], packedGrads.DQkv.Lengths.ToArray());
        var dqkv = Precision<T>.Flatten(packedGrads.DQkv);
        Tolerance.AssertIdentical("dQ", Slice(dqkv, b * s, 3, 0, h * d), Precision<T>.Flatten(grads.DQ), context);
        Tolerance.AssertIdentical("dK", Slice(dqkv, b * s, 3, 1, h * d), Precision<T>.Flatten(grads.DK), context);
        Tolerance.AssertIdentical("dV", Slice(dqkv, b * s, 3, 2, h * d), Precision<T>.Flatten(grads.DV), context);
    }

    [Theory]
    [InlineData(Dtype.Fp32)]
    [InlineData(Dtype.Fp16)]
    [InlineData(Dtype.Bf16)]
    public void KvPackedEqualsSeparate(Dtype dtype)
    {
        var options = new AttentionOptions { WindowLeft = 20, WindowRight = 5, Softcap = 8f };
        switch (dtype)
        {
            case Dtype.Fp32: KvPacked<float>(options); break;
            case Dtype.Fp16: KvPacked<Half>(options); break;
            default: KvPacked<BFloat16>(options); break;
        }
    }

    private static void KvPacked<T>(AttentionOptions options) where T : unmanaged
    {
        var random = new TestRandom();
        var problem = new Problem(2, 50, 90, 4, 2, 59);
        int rowsK = problem.Batch * problem.SeqlenK, width = problem.HeadsKv * problem.HeadDim;
        var kv = Precision<T>.FromFloats(random.Normal(rowsK * 2 * width));
        var q = Precision<T>.FromFloats(random.Normal(problem.QCount));
        var dOut = Precision<T>.FromFloats(random.Normal(problem.QCount));
        var (k, v) = (Slice(kv, rowsK, 2, 0, width), Slice(kv, rowsK, 2, 1, width));
        string context = AttentionCheck.Context<T>(problem, options, random);

        var qt = Tensor.Create(q, problem.QLengths);
        var kvTensor = Tensor.Create(kv, [problem.Batch, problem.SeqlenK, 2, problem.HeadsKv, problem.HeadDim]);
        Tensor<T> kt = Tensor.Create(k, problem.KvLengths), vt = Tensor.Create(v, problem.KvLengths);
        var packed = FlashAttention.ForwardKvPacked<T>(qt, kvTensor, options, Ct);
        var separate = FlashAttention.Forward<T>(qt, kt, vt, options, Ct);
        Tolerance.AssertIdentical("O", Precision<T>.Flatten(packed.Output), Precision<T>.Flatten(separate.Output), context);
        Tolerance.AssertIdentical("LSE", Flat.Of(packed.LogSumExp), Flat.Of(separate.LogSumExp), context);

        var dOutTensor = Tensor.Create(dOut, problem.QLengths);
        var packedGrads = FlashAttention.BackwardKvPacked<T>(dOutTensor, qt, kvTensor, packed.Output, packed.LogSumExp, options, cancellationToken: Ct);
        var grads = FlashAttention.Backward<T>(dOutTensor, qt, kt, vt, separate.Output, separate.LogSumExp, options, cancellationToken: Ct);
        var dkv = Precision<T>.Flatten(packedGrads.DKv);
        Tolerance.AssertIdentical("dQ", Precision<T>.Flatten(packedGrads.DQ), Precision<T>.Flatten(grads.DQ), context);
        Tolerance.AssertIdentical("dK", Slice(dkv, rowsK, 2, 0, width), Precision<T>.Flatten(grads.DK), context);
        Tolerance.AssertIdentical("dV", Slice(dkv, rowsK, 2, 1, width), Precision<T>.Flatten(grads.DV), context);
    }

    /// <summary>Part <paramref name="part"/> of a (rows, parts, width) array as a dense (rows, width) array.</summary>
    internal static TElement[] Slice<TElement>(TElement[] packed, int rows, int parts, int part, int width)
    {
        var result = new TElement[rows * width];
        for (int r = 0; r < rows; r++)
            Array.Copy(packed, (r * parts + part) * width, result, r * width, width);
        return result;
    }
}
