using FlashAttn.Tests.Infrastructure;
using FlashAttn.TorchSharp;
using TorchSharp;

namespace FlashAttn.Tests.TorchSharp;

/// <summary>
/// <see cref="FlashMultiHeadAttention"/>: forward and backward against the same module computed with TorchSharp's unfused
/// attention (same parameters), MHA and GQA, and dropout in training mode only.
/// </summary>
[Trait("Category", "TorchSharp")]
[Collection(TorchSharpCollection.Name)]
public sealed class FlashMultiHeadAttentionTests
{
    [Theory]
    [InlineData(64, 4, null, false)]
    [InlineData(64, 4, 2L, true)]   // GQA: q heads and a packed kv
    [InlineData(48, 6, 1L, true)]   // MQA
    public void ForwardAndBackwardMatchTheUnfusedModule(int embedDim, int heads, long? kvHeads, bool causal)
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        string context = $"embed {embedDim}, heads {heads}/{kvHeads?.ToString() ?? "-"}, causal {causal}, seed {random.Seed}";
        using var scope = torch.NewDisposeScope();
        torch.manual_seed(random.Seed);
        using var module = new FlashMultiHeadAttention(embedDim, heads, kvHeads, causal);
        Assert.Equal(["Wqkv.weight", "Wqkv.bias", "out_proj.weight", "out_proj.bias"], module.named_parameters().Select(p => p.name).ToArray());
        var x = TorchTest.Normal(random, [2, 19, embedDim]).requires_grad_(true);

        var y = module.call(x);
        Assert.Equal(x.shape, y.shape);
        var dY = TorchTest.Normal(random, [2, 19, embedDim]);
        BackwardFailure.Run(() => (y * dY).sum().backward());
        var flashGrads = module.parameters().Select(p => p.grad!.clone()).Append(x.grad!.clone()).ToArray();

        module.zero_grad();
        x.grad!.zero_();
        var yRef = Unfused(module, x);
        (yRef * dY).sum().backward();
        var refGrads = module.parameters().Select(p => p.grad!.clone()).Append(x.grad!.clone()).ToArray();

        TorchCpuAttentionTests.AssertNear("output", y, yRef, context, 2e-5);
        string[] names = ["dWqkv.weight", "dWqkv.bias", "dout_proj.weight", "dout_proj.bias", "dx"];
        for (int i = 0; i < names.Length; i++)
            TorchCpuAttentionTests.AssertNear(names[i], flashGrads[i], refGrads[i], context, 1e-4);
    }

    [Fact]
    public void DropoutAppliesInTrainingModeOnly()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        using var module = new FlashMultiHeadAttention(32, 2, dropout: 0.5);
        var x = TorchTest.Normal(random, [1, 16, 32]);
        module.eval();
        Assert.True(module.call(x).equal(module.call(x)).all().item<bool>(), "eval mode: two calls differ");
        module.train();
        Assert.False(module.call(x).equal(module.call(x)).all().item<bool>(), "training mode: dropout drew the same mask twice");
    }

    [Fact]
    public void BadArgumentsAreRejected()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        Assert.Throws<ArgumentException>(() => new FlashMultiHeadAttention(30, 4));
        Assert.Throws<ArgumentException>(() => new FlashMultiHeadAttention(32, 4, numKvHeads: 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => new FlashMultiHeadAttention(32, 4, dropout: 1.0));
        using var module = new FlashMultiHeadAttention(32, 4);
        using var wrong = torch.zeros(1, 5, 16);
        Assert.Throws<ArgumentException>(() => module.call(wrong));
    }

    /// <summary>The module's computation with TorchSharp's unfused attention in place of ours.</summary>
    private static torch.Tensor Unfused(FlashMultiHeadAttention module, torch.Tensor x)
    {
        long b = x.shape[0], s = x.shape[1], h = module.NumHeads, hk = module.NumKvHeads, d = module.HeadDim;
        var qkv = module.QkvProjection.call(x);
        var q = qkv.narrow(-1, 0, h * d).view(b, s, h, d);
        var k = qkv.narrow(-1, h * d, hk * d).view(b, s, hk, d);
        var v = qkv.narrow(-1, (h + hk) * d, hk * d).view(b, s, hk, d);
        var context = TorchReference.Attention(q, k, v, module.Causal);
        return module.OutputProjection.call(context.reshape(b, s, module.EmbedDim));
    }
}
