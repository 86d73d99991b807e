using FlashAttn.Tests.Infrastructure;
using FlashAttn.TorchSharp;
using TorchSharp;

namespace FlashAttn.Tests.TorchSharp;

/// <summary>
/// The TorchSharp adapter on CPU tensors: forward and backward (through <c>loss.backward()</c>) against TorchSharp's own
/// unfused attention in float64. Skipped where TorchSharp's native libraries cannot load.
/// </summary>
[Trait("Category", "TorchSharp")]
[Collection(TorchSharpCollection.Name)]
public sealed class TorchCpuAttentionTests
{
    public static TheoryData<TorchPacking, int, int, int, int, int, int, bool> Float32Cases => new()
    {
        { TorchPacking.Separate, 2, 17, 23, 4, 4, 40, false },
        { TorchPacking.Separate, 1, 17, 33, 2, 2, 59, true },    // causal, seqlen_q < seqlen_k: bottom-right aligned
        { TorchPacking.Separate, 2, 31, 31, 6, 2, 32, true },    // GQA 3:1
        { TorchPacking.Separate, 1, 9, 40, 4, 1, 16, false },    // MQA
        { TorchPacking.QkvPacked, 2, 29, 29, 3, 3, 24, false },
        { TorchPacking.QkvPacked, 1, 64, 64, 2, 2, 64, true },
        { TorchPacking.KvPacked, 2, 13, 27, 4, 2, 48, false },   // GQA through a packed kv
        { TorchPacking.KvPacked, 1, 20, 20, 4, 4, 8, true },
    };

    [Theory]
    [MemberData(nameof(Float32Cases))]
    public void Float32MatchesTorchReference(TorchPacking packing, int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal)
    {
        TorchSharpRequirement.SkipIfUnavailable();
        TorchAttentionCheck.ForwardBackward(packing, batch, seqlenQ, seqlenK, headsQ, headsKv, headDim, causal, torch.ScalarType.Float32, torch.CPU);
    }

    [Theory]
    [InlineData(torch.ScalarType.Float16)]
    [InlineData(torch.ScalarType.BFloat16)]
    public void HalfPrecisionOnCpuMatchesTorchReference(torch.ScalarType dtype)
    {
        TorchSharpRequirement.SkipIfUnavailable();
        TorchAttentionCheck.ForwardBackward(TorchPacking.Separate, 1, 19, 35, 4, 2, 32, causal: true, dtype, torch.CPU);
    }

    [Fact]
    public void CustomSoftmaxScaleIsUsed()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        TorchAttentionCheck.ForwardBackward(TorchPacking.Separate, 1, 16, 16, 2, 2, 32, causal: false, torch.ScalarType.Float32, torch.CPU, scale: 0.05);
    }

    [Fact]
    public void PackedQkvEqualsSeparateInputs()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        var qkv = TorchTest.Normal(random, [2, 37, 3, 4, 32]).requires_grad_(true);
        var q = qkv.detach().select(2, 0).clone().requires_grad_(true);
        var k = qkv.detach().select(2, 1).clone().requires_grad_(true);
        var v = qkv.detach().select(2, 2).clone().requires_grad_(true);
        var dOut = TorchTest.Normal(random, [2, 37, 4, 32]);
        var options = new AttentionOptions { Causal = true };

        var packed = FlashAttentionTorch.AttentionQkvPacked(qkv, options);
        var separate = FlashAttentionTorch.Attention(q, k, v, options);
        BackwardFailure.Run(() => (packed * dOut).sum().backward());
        BackwardFailure.Run(() => (separate * dOut).sum().backward());

        string context = $"seed {random.Seed}";
        AssertNear("output", packed, separate, context);
        AssertNear("dq", qkv.grad!.select(2, 0), q.grad!, context);
        AssertNear("dk", qkv.grad!.select(2, 1), k.grad!, context);
        AssertNear("dv", qkv.grad!.select(2, 2), v.grad!, context);
    }

    [Fact]
    public void NonContiguousInputsAreReadThroughTheirStrides()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        // (batch, heads, seqlen, headdim) tensors transposed to flash-attn's layout: strided, head dim still contiguous;
        // and a v whose head dim is strided (forces the maybe-contiguous copy).
        var q = TorchTest.Normal(random, [2, 3, 21, 16]).transpose(1, 2).requires_grad_(true);
        var k = TorchTest.Normal(random, [2, 3, 25, 16]).transpose(1, 2).requires_grad_(true);
        var vWide = TorchTest.Normal(random, [2, 25, 3, 32]);
        var v = vWide.narrow(3, 0, 32).view(2, 25, 3, 16, 2).select(4, 0).detach().requires_grad_(true);
        Assert.False(q.is_contiguous());
        Assert.Equal(2, v.stride(3));

        var output = FlashAttentionTorch.Attention(q, k, v);
        var reference = TorchReference.Attention(q.detach().to(torch.ScalarType.Float64), k.detach().to(torch.ScalarType.Float64),
            v.detach().to(torch.ScalarType.Float64), causal: false);
        AssertNear("output", output, reference, $"seed {random.Seed}", 1e-5);
        BackwardFailure.Run(() => output.sum().backward());
        Assert.Equal(q.shape, q.grad!.shape);
        Assert.Equal(v.shape, v.grad!.shape);
        TorchTest.AssertFinite("dv", v.grad!);
    }

    [Fact]
    public void BroadcastInputsAreCopiedFirst()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        var q = TorchTest.Normal(random, [1, 12, 4, 16]);
        var k = TorchTest.Normal(random, [1, 12, 1, 16]).expand(1, 12, 4, 16); // stride 0 over heads
        var v = TorchTest.Normal(random, [1, 12, 4, 16]);
        Assert.Equal(0, k.stride(2));
        var output = FlashAttentionTorch.Attention(q, k, v);
        var reference = FlashAttentionTorch.Attention(q, k.contiguous(), v);
        AssertNear("output", output, reference, $"seed {random.Seed}", 0);
    }

    /// <summary>out.sum().backward() hands the function an expanded (stride 0) gradient; the adapter must make it contiguous.</summary>
    [Fact]
    public void SumLossGivesTheGradientOfTheReference()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        var q = TorchTest.Normal(random, [1, 12, 2, 16]).requires_grad_(true);
        var k = TorchTest.Normal(random, [1, 12, 2, 16]).requires_grad_(true);
        var v = TorchTest.Normal(random, [1, 12, 2, 16]).requires_grad_(true);
        BackwardFailure.Run(() => FlashAttentionTorch.Attention(q, k, v, new AttentionOptions { Causal = true }).sum().backward());

        var q64 = TorchTest.Leaf(q, torch.ScalarType.Float64);
        var k64 = TorchTest.Leaf(k, torch.ScalarType.Float64);
        var v64 = TorchTest.Leaf(v, torch.ScalarType.Float64);
        TorchReference.Attention(q64, k64, v64, causal: true).sum().backward();
        string context = $"seed {random.Seed}";
        AssertNear("dq", q.grad!, q64.grad!, context, 1e-4);
        AssertNear("dk", k.grad!, k64.grad!, context, 1e-4);
        AssertNear("dv", v.grad!, v64.grad!, context, 1e-4);
    }

    /// <summary>
    /// The article's example, scaled down for a CPU: qkv packed in fp16, dropout 0.1, scale 1/sqrt(headdim), causal;
    /// <c>out.mean().backward()</c> gives finite gradients. The result equals the core API's with the same dropout
    /// state (the same Philox mask), and forward and backward agree on that mask.
    /// </summary>
    [Fact]
    public void ArticleExampleWithDropoutRunsForwardAndBackward()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        const int batch = 1, seqlen = 128, heads = 4, headDim = 32;
        var qkv = TorchTest.Normal(random, [batch, seqlen, 3, heads, headDim], torch.ScalarType.Float16).requires_grad_(true);
        var options = new AttentionOptions
        {
            DropoutProbability = 0.1f,
            SoftmaxScale = 1f / MathF.Sqrt(headDim),
            Causal = true,
            DropoutState = new DropoutState((ulong)random.Seed, 7),
        };

        var output = FlashAttentionTorch.AttentionQkvPacked(qkv, options);
        BackwardFailure.Run(() => output.mean().backward());
        TorchTest.AssertFinite("output", output);
        TorchTest.AssertFinite("dqkv", qkv.grad!);
        Assert.True(qkv.grad!.abs().sum().to(torch.ScalarType.Float32).item<float>() > 0, "dqkv is all zeros");

        // The core API over the same values and dropout state.
        var host = ToHost(qkv);
        var core = FlashAttention.ForwardQkvPacked<Half>(host, options, TestContext.Current.CancellationToken);
        double[] actual = TorchTest.Values(output);
        var expected = new Half[core.Output.FlattenedLength];
        core.Output.FlattenTo(expected);
        for (int i = 0; i < actual.Length; i++)
            Assert.True(actual[i] == (double)expected[i], $"output[{i}]: adapter {actual[i]}, core {(double)expected[i]} (seed {random.Seed})");

        var dOut = Tensor.CreateFromShape<Half>(core.Output.Lengths);
        dOut.Fill((Half)(1.0 / core.Output.FlattenedLength));
        var coreGrads = FlashAttention.BackwardQkvPacked<Half>(dOut, host, core.Output, core.LogSumExp, options, core.DropoutState,
            TestContext.Current.CancellationToken);
        double[] grad = TorchTest.Values(qkv.grad!);
        var expectedGrad = new Half[coreGrads.DQkv.FlattenedLength];
        coreGrads.DQkv.FlattenTo(expectedGrad);
        for (int i = 0; i < grad.Length; i++)
            Assert.True(grad[i] == (double)expectedGrad[i], $"dqkv[{i}]: adapter {grad[i]}, core {(double)expectedGrad[i]} (seed {random.Seed})");
    }

    [Fact]
    public void DropoutWithoutAStateDrawsAFreshMaskEachCall()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        var q = TorchTest.Normal(random, [1, 32, 2, 16]);
        var options = new AttentionOptions { DropoutProbability = 0.5f };
        var first = FlashAttentionTorch.Attention(q, q, q, options);
        var second = FlashAttentionTorch.Attention(q, q, q, options);
        Assert.False(first.equal(second).all().item<bool>(), "two calls without a dropout state drew the same mask");
        var fixedState = options with { DropoutState = new DropoutState(42, 1) };
        Assert.True(FlashAttentionTorch.Attention(q, q, q, fixedState).equal(FlashAttentionTorch.Attention(q, q, q, fixedState)).all().item<bool>(),
            "the same dropout state gave different outputs");
    }

    [Fact]
    public void NoGradInputsGiveAPlainTensor()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        var q = TorchTest.Normal(random, [1, 8, 2, 16]);
        var output = FlashAttentionTorch.Attention(q, q, q);
        Assert.False(output.requires_grad);
        using (torch.no_grad())
        {
            var qg = q.clone().requires_grad_(true);
            Assert.False(FlashAttentionTorch.Attention(qg, qg, qg).requires_grad);
        }
    }

    [Fact]
    public void EmptyBatchGivesAnEmptyOutput()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var q = torch.empty(0, 5, 2, 16);
        var output = FlashAttentionTorch.Attention(q, q, q);
        Assert.Equal(new long[] { 0, 5, 2, 16 }, output.shape);
    }

    [Fact]
    public void BadInputsAreRejectedWithTheArgumentName()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var q = torch.randn(1, 8, 2, 16);
        var e1 = Assert.Throws<ArgumentException>(() => FlashAttentionTorch.Attention(q, q.to(torch.ScalarType.Float64), q));
        Assert.Equal("k", e1.ParamName);
        var e2 = Assert.Throws<ArgumentException>(() => FlashAttentionTorch.Attention(q.to(torch.ScalarType.Float64), q.to(torch.ScalarType.Float64), q.to(torch.ScalarType.Float64)));
        Assert.Contains("float32, float16 and bfloat16", e2.Message);
        var e3 = Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionQkvPacked(q));
        Assert.Equal("qkv", e3.ParamName);
        var e4 = Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionKvPacked(q, torch.randn([1, 8, 3, 2, 16])));
        Assert.Equal("kv", e4.ParamName);
        Assert.ThrowsAny<ArgumentException>(() => FlashAttentionTorch.Attention(q, torch.randn(1, 8, 2, 24), torch.randn(1, 8, 2, 24)));
        Assert.Throws<ArgumentException>(() => FlashAttentionTorch.Attention(q, q, q, new AttentionOptions { ReturnProbabilities = true }));
        Assert.Throws<ArgumentNullException>(() => FlashAttentionTorch.Attention(q, null!, q));
    }

    private static Tensor<Half> ToHost(torch.Tensor tensor)
    {
        double[] values = TorchTest.Values(tensor);
        var data = Array.ConvertAll(values, x => (Half)x);
        return Tensor.Create(data, Array.ConvertAll(tensor.shape, x => (nint)x));
    }

    internal static void AssertNear(string what, torch.Tensor actual, torch.Tensor expected, string context, double tolerance = 1e-6)
    {
        Assert.Equal(expected.shape, actual.shape);
        double[] a = TorchTest.Values(actual), e = TorchTest.Values(expected);
        for (int i = 0; i < a.Length; i++)
            if (!(Math.Abs(a[i] - e[i]) <= tolerance * Math.Max(1, Math.Abs(e[i]))))
                Assert.Fail($"{what}[{i}]: {a[i]} vs {e[i]} (tolerance {tolerance}) {context}");
    }
}
