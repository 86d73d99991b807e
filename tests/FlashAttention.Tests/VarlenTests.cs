using FlashAttn.Reference;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>
/// Variable-length batches: each sequence of the concatenated layout must equal the reference run on that sequence
/// alone (batch index = sequence index for ALiBi and dropout), forward and backward; the packed varlen forms must
/// equal the separate-tensor varlen results.
/// </summary>
public sealed class VarlenTests
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    // Includes an empty query sequence and an empty key sequence.
    private static readonly int[] LengthsQ = [17, 1, 113, 0, 40, 9];
    private static readonly int[] LengthsK = [30, 5, 113, 7, 1, 0];

    private static int[] Cumulative(int[] lengths)
    {
        var cu = new int[lengths.Length + 1];
        for (int i = 0; i < lengths.Length; i++) cu[i + 1] = cu[i] + lengths[i];
        return cu;
    }

    public static TheoryData<Dtype, string> Cases() => new()
    {
        // Not fp32 "plain": sequence 4 (40 queries, 1 key) then has dK = 0 exactly, which FA2 leaves as a residue summed over
        // 160 rows while the naive baseline cancels exactly (see BackwardTests.Shapes). Causal leaves that key to one row.
        { Dtype.Bf16, "plain" }, { Dtype.Fp32, "causal" }, { Dtype.Fp16, "causal" }, { Dtype.Bf16, "window" }, { Dtype.Fp32, "alibi+dropout" },
        { Dtype.Fp16, "softcap+window" },
    };

    private static AttentionOptions OptionsFor(string name, TestRandom random) => name switch
    {
        "causal" => new AttentionOptions { Causal = true },
        "window" => new AttentionOptions { WindowLeft = 10, WindowRight = 3 },
        "alibi+dropout" => new AttentionOptions
        {
            AlibiSlopes = Tensor.Create(random.Uniform(LengthsQ.Length * 4, 0.01f, 0.5f), [LengthsQ.Length, 4]),
            DropoutProbability = 0.2f, DropoutState = random.NextDropoutState(), Causal = true,
        },
        "softcap+window" => new AttentionOptions { Softcap = 2f, WindowLeft = 12, WindowRight = 0 },
        _ => AttentionOptions.Default,
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void VarlenMatchesPerSequenceReference(Dtype dtype, string name)
    {
        switch (dtype)
        {
            case Dtype.Fp32: Check<float>(name); break;
            case Dtype.Fp16: Check<Half>(name); break;
            default: Check<BFloat16>(name); break;
        }
    }

    private static void Check<T>(string name) where T : unmanaged
    {
        var random = new TestRandom();
        var options = OptionsFor(name, random);
        int hq = 4, hkv = 2, d = 40;
        int[] cuQ = Cumulative(LengthsQ), cuK = Cumulative(LengthsK);
        int totalQ = cuQ[^1], totalK = cuK[^1], maxQ = LengthsQ.Max(), maxK = LengthsK.Max();
        var q = Precision<T>.FromFloats(random.Normal(totalQ * hq * d));
        var k = Precision<T>.FromFloats(random.Normal(totalK * hkv * d));
        var v = Precision<T>.FromFloats(random.Normal(totalK * hkv * d));
        var dOut = Precision<T>.FromFloats(random.Normal(totalQ * hq * d));
        Tensor<T> qt = Tensor.Create(q, [totalQ, hq, d]), kt = Tensor.Create(k, [totalK, hkv, d]), vt = Tensor.Create(v, [totalK, hkv, d]);
        string context = $"[{Precision<T>.Name} varlen {name} {random}]";

        var result = FlashAttention.ForwardVarlen<T>(qt, kt, vt, cuQ, cuK, maxQ, maxK, options, Ct);
        Assert.Equal([totalQ, hq, d], result.Output.Lengths.ToArray());
        Assert.Equal([hq, totalQ], result.LogSumExp.Lengths.ToArray());
        var grads = FlashAttention.BackwardVarlen<T>(Tensor.Create(dOut, [totalQ, hq, d]), qt, kt, vt, result.Output, result.LogSumExp,
            cuQ, cuK, maxQ, maxK, options, result.DropoutState, Ct);

        // Reference and naive baseline, sequence by sequence, assembled into the varlen layouts.
        var settings = ReferenceSettings.From(options, d, LengthsQ.Length, hq, result.DropoutState);
        double[] o64 = new double[q.Length], oNaive = new double[q.Length], lse64 = new double[hq * totalQ], lseNaive = new double[hq * totalQ];
        double[] dq64 = new double[q.Length], dqNaive = new double[q.Length], dk64 = new double[k.Length], dkNaive = new double[k.Length];
        double[] dv64 = new double[k.Length], dvNaive = new double[k.Length];
        for (int s = 0; s < LengthsQ.Length; s++)
        {
            var shape = new ReferenceShape(1, LengthsQ[s], LengthsK[s], hq, hkv, d);
            var sequence = settings with { BatchOffset = s };
            T[] qs = q[(cuQ[s] * hq * d)..(cuQ[s + 1] * hq * d)], dos = dOut[(cuQ[s] * hq * d)..(cuQ[s + 1] * hq * d)];
            T[] ks = k[(cuK[s] * hkv * d)..(cuK[s + 1] * hkv * d)], vs = v[(cuK[s] * hkv * d)..(cuK[s + 1] * hkv * d)];
            var r64 = ReferenceAttention.Backward(shape, sequence, Precision<T>.ToDoubles(qs), Precision<T>.ToDoubles(ks), Precision<T>.ToDoubles(vs), Precision<T>.ToDoubles(dos));
            float[] qf = Precision<T>.ToFloats(qs), kf = Precision<T>.ToFloats(ks), vf = Precision<T>.ToFloats(vs);
            var naiveForward = ReferenceAttention.Forward(shape, sequence, qf, kf, vf, Precision<T>.OperandRounding);
            var stored = Array.ConvertAll(naiveForward.Output, x => Precision<T>.ToFloat(Precision<T>.FromFloat(x)));
            var rNaive = ReferenceAttention.Backward(shape, sequence, qf, kf, vf, Precision<T>.ToFloats(dos), stored, Precision<T>.OperandRounding, probabilitiesFromLse: true);

            r64.Forward.Output.CopyTo(o64, cuQ[s] * hq * d);
            Precision<T>.RoundThrough(naiveForward.Output).CopyTo(oNaive, cuQ[s] * hq * d);
            r64.DQ.CopyTo(dq64, cuQ[s] * hq * d);
            Precision<T>.RoundThrough(rNaive.DQ).CopyTo(dqNaive, cuQ[s] * hq * d);
            r64.DK.CopyTo(dk64, cuK[s] * hkv * d);
            Precision<T>.RoundThrough(rNaive.DK).CopyTo(dkNaive, cuK[s] * hkv * d);
            r64.DV.CopyTo(dv64, cuK[s] * hkv * d);
            Precision<T>.RoundThrough(rNaive.DV).CopyTo(dvNaive, cuK[s] * hkv * d);
            for (int h = 0; h < hq; h++)
                for (int i = 0; i < LengthsQ[s]; i++)
                {
                    lse64[h * totalQ + cuQ[s] + i] = r64.Forward.LogSumExp[h * LengthsQ[s] + i];
                    lseNaive[h * totalQ + cuQ[s] + i] = naiveForward.LogSumExp[h * LengthsQ[s] + i];
                }
        }

        double u = Precision<T>.FloorUnit;
        Tolerance.AssertClose("O", Precision<T>.Flatten(result.Output), o64, oNaive, u, context);
        Tolerance.AssertClose("LSE", Flat.Of(result.LogSumExp), lse64, lseNaive, u, context);
        Tolerance.AssertClose("dQ", Precision<T>.Flatten(grads.DQ), dq64, dqNaive, u, context);
        Tolerance.AssertClose("dK", Precision<T>.Flatten(grads.DK), dk64, dkNaive, u, context);
        Tolerance.AssertClose("dV", Precision<T>.Flatten(grads.DV), dv64, dvNaive, u, context);
    }

    [Fact]
    public void PackedQkvVarlenEqualsSeparateVarlen()
    {
        var random = new TestRandom();
        int[] lengths = [23, 1, 70, 64];
        int[] cu = Cumulative(lengths);
        int total = cu[^1], h = 2, d = 24, max = lengths.Max();
        var options = new AttentionOptions { Causal = true, DropoutProbability = 0.15f, DropoutState = random.NextDropoutState() };
        var qkv = Precision<BFloat16>.FromFloats(random.Normal(total * 3 * h * d));
        var dOut = Tensor.Create(Precision<BFloat16>.FromFloats(random.Normal(total * h * d)), [total, h, d]);
        var packedTensor = Tensor.Create(qkv, [total, 3, h, d]);
        Tensor<BFloat16> q = Tensor.Create(PackedTests.Slice(qkv, total, 3, 0, h * d), [total, h, d]);
        Tensor<BFloat16> k = Tensor.Create(PackedTests.Slice(qkv, total, 3, 1, h * d), [total, h, d]);
        Tensor<BFloat16> v = Tensor.Create(PackedTests.Slice(qkv, total, 3, 2, h * d), [total, h, d]);
        string context = $"[{random}]";

        var packed = FlashAttention.ForwardVarlenQkvPacked<BFloat16>(packedTensor, cu, max, options, Ct);
        var separate = FlashAttention.ForwardVarlen<BFloat16>(q, k, v, cu, cu, max, max, options, Ct);
        Tolerance.AssertIdentical("O", Precision<BFloat16>.Flatten(packed.Output), Precision<BFloat16>.Flatten(separate.Output), context);
        Tolerance.AssertIdentical("LSE", Flat.Of(packed.LogSumExp), Flat.Of(separate.LogSumExp), context);

        var packedGrads = FlashAttention.BackwardVarlenQkvPacked<BFloat16>(dOut, packedTensor, packed.Output, packed.LogSumExp, cu, max, options,
            packed.DropoutState, Ct);
        var grads = FlashAttention.BackwardVarlen<BFloat16>(dOut, q, k, v, separate.Output, separate.LogSumExp, cu, cu, max, max, options,
            separate.DropoutState, Ct);
        var dqkv = Precision<BFloat16>.Flatten(packedGrads.DQkv);
        Tolerance.AssertIdentical("dQ", PackedTests.Slice(dqkv, total, 3, 0, h * d), Precision<BFloat16>.Flatten(grads.DQ), context);
        Tolerance.AssertIdentical("dK", PackedTests.Slice(dqkv, total, 3, 1, h * d), Precision<BFloat16>.Flatten(grads.DK), context);
        Tolerance.AssertIdentical("dV", PackedTests.Slice(dqkv, total, 3, 2, h * d), Precision<BFloat16>.Flatten(grads.DV), context);
    }

    [Fact]
    public void PackedKvVarlenEqualsSeparateVarlen()
    {
        var random = new TestRandom();
        int[] cuQ = Cumulative(LengthsQ), cuK = Cumulative(LengthsK);
        int totalQ = cuQ[^1], totalK = cuK[^1], hq = 6, hkv = 2, d = 17, maxQ = LengthsQ.Max(), maxK = LengthsK.Max();
        var options = new AttentionOptions { WindowLeft = 8, WindowRight = 8, Softcap = 3f };
        var kv = Precision<Half>.FromFloats(random.Normal(totalK * 2 * hkv * d));
        var qt = Tensor.Create(Precision<Half>.FromFloats(random.Normal(totalQ * hq * d)), [totalQ, hq, d]);
        var dOut = Tensor.Create(Precision<Half>.FromFloats(random.Normal(totalQ * hq * d)), [totalQ, hq, d]);
        var kvTensor = Tensor.Create(kv, [totalK, 2, hkv, d]);
        Tensor<Half> k = Tensor.Create(PackedTests.Slice(kv, totalK, 2, 0, hkv * d), [totalK, hkv, d]);
        Tensor<Half> v = Tensor.Create(PackedTests.Slice(kv, totalK, 2, 1, hkv * d), [totalK, hkv, d]);
        string context = $"[{random}]";

        var packed = FlashAttention.ForwardVarlenKvPacked<Half>(qt, kvTensor, cuQ, cuK, maxQ, maxK, options, Ct);
        var separate = FlashAttention.ForwardVarlen<Half>(qt, k, v, cuQ, cuK, maxQ, maxK, options, Ct);
        Tolerance.AssertIdentical("O", Precision<Half>.Flatten(packed.Output), Precision<Half>.Flatten(separate.Output), context);
        Tolerance.AssertIdentical("LSE", Flat.Of(packed.LogSumExp), Flat.Of(separate.LogSumExp), context);

        var packedGrads = FlashAttention.BackwardVarlenKvPacked<Half>(dOut, qt, kvTensor, packed.Output, packed.LogSumExp, cuQ, cuK, maxQ, maxK, options,
            cancellationToken: Ct);
        var grads = FlashAttention.BackwardVarlen<Half>(dOut, qt, k, v, separate.Output, separate.LogSumExp, cuQ, cuK, maxQ, maxK, options,
            cancellationToken: Ct);
        var dkv = Precision<Half>.Flatten(packedGrads.DKv);
        Tolerance.AssertIdentical("dQ", Precision<Half>.Flatten(packedGrads.DQ), Precision<Half>.Flatten(grads.DQ), context);
        Tolerance.AssertIdentical("dK", PackedTests.Slice(dkv, totalK, 2, 0, hkv * d), Precision<Half>.Flatten(grads.DK), context);
        Tolerance.AssertIdentical("dV", PackedTests.Slice(dkv, totalK, 2, 1, hkv * d), Precision<Half>.Flatten(grads.DV), context);
    }

    [Fact]
    public void VarlenProbabilitiesArePaddedPerSequence()
    {
        var random = new TestRandom();
        int[] lengthsQ = [3, 5], lengthsK = [4, 2];
        int[] cuQ = Cumulative(lengthsQ), cuK = Cumulative(lengthsK);
        int d = 8;
        var q = Tensor.Create(random.Normal(8 * d), [8, 1, d]);
        var k = Tensor.Create(random.Normal(6 * d), [6, 1, d]);
        var v = Tensor.Create(random.Normal(6 * d), [6, 1, d]);
        var result = FlashAttention.ForwardVarlen<float>(q, k, v, cuQ, cuK, 5, 4, new AttentionOptions { ReturnProbabilities = true }, Ct);
        Assert.NotNull(result.Probabilities);
        Assert.Equal([2, 1, 5, 4], result.Probabilities.Lengths.ToArray());
        var p = Flat.Of(result.Probabilities);
        for (int s = 0; s < 2; s++)
            for (int i = 0; i < 5; i++)
            {
                double rowSum = 0;
                for (int j = 0; j < 4; j++)
                {
                    double x = p[(s * 5 + i) * 4 + j];
                    if (i >= lengthsQ[s] || j >= lengthsK[s]) Assert.True(x == 0, $"padding P[{s},{i},{j}] = {x}. [{random}]");
                    rowSum += x;
                }
                if (i < lengthsQ[s]) Assert.True(Math.Abs(rowSum - 1) < 1e-5, $"row {s},{i} sums to {rowSum}. [{random}]");
            }
    }
}
