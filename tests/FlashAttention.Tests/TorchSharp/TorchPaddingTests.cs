using FlashAttn.Tests.Infrastructure;
using FlashAttn.TorchSharp;
using TorchSharp;

namespace FlashAttn.Tests.TorchSharp;

/// <summary>
/// flash-attn's bert_padding helpers over torch tensors: the same tokens, indices and cu_seqlens as the host helpers, on
/// the inputs' device, with gradients flowing back through the gather and the scatter to the padded hidden states.
/// </summary>
[Trait("Category", "TorchSharp")]
[Collection(TorchSharpCollection.Name)]
public sealed class TorchPaddingTests
{
    // Holes anywhere: a gap, an empty row, left padding, a full row.
    private static readonly bool[] HoleyMask =
    [
        true, false, true, true, false,
        false, false, false, false, false,
        false, true, true, true, true,
        true, true, true, true, true,
    ];

    private const int Batch = 4, Seqlen = 5, Heads = 2, HeadDim = 3;

    [Fact]
    public void UnpadMatchesTheHostHelpers()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        CheckAgainstHost(torch.CPU);
    }

    [Fact]
    public void UnpadMatchesTheHostHelpersOnCuda()
    {
        TorchSharpRequirement.SkipIfNoCuda();
        CheckAgainstHost(torch.CUDA);
    }

    private static void CheckAgainstHost(torch.Device device)
    {
        using var scope = torch.NewDisposeScope();
        var random = new TestRandom();
        float[] data = random.Normal(Batch * Seqlen * Heads * HeadDim);
        var padded = torch.tensor(data, [Batch, Seqlen, Heads, HeadDim]).to(device);
        var mask = torch.tensor(HoleyMask, [Batch, Seqlen]).to(device);
        var host = VarlenPadding.Unpad<float>(Tensor.Create(data, [Batch, Seqlen, Heads, HeadDim]), Tensor.Create(HoleyMask, [Batch, Seqlen]));

        using var batch = FlashPadding.Unpad(padded, mask);

        Assert.Equal(torch.ScalarType.Int32, batch.CumulativeSeqlens.dtype);
        Assert.Equal(device.type, batch.CumulativeSeqlens.device_type);
        Assert.Equal(device.type, batch.Unpadded.device_type);
        Assert.Equal(Array.ConvertAll(host.CumulativeSeqlens, x => (double)x), TorchTest.Values(batch.CumulativeSeqlens));
        Assert.Equal(Array.ConvertAll(host.Indices, x => (double)x), TorchTest.Values(batch.Indices));
        Assert.Equal(Array.ConvertAll(host.Seqlens, x => (double)x), TorchTest.Values(batch.Seqlens));
        Assert.Equal(host.MaxSeqlen, batch.MaxSeqlen);
        Assert.Equal([host.TotalTokens, Heads, HeadDim], batch.Unpadded.shape);
        Assert.Equal(Precision<float>.Flatten(host.Unpadded), TorchTest.Values(batch.Unpadded));

        var repadded = batch.Pad(batch.Unpadded);
        Assert.Equal(Precision<float>.Flatten(host.Pad<float>(host.Unpadded)), TorchTest.Values(repadded));
    }

    [Fact]
    public void IntegerMasksAndMaskFromLengthsWork()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var hidden = TorchTest.Normal(new TestRandom(), [3, 4, 6]);
        var mask = FlashPadding.MaskFromLengths(torch.tensor(new long[] { 4, 0, 2 }), 4);
        Assert.Equal([1.0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0], TorchTest.Values(mask));

        using var fromBool = FlashPadding.Unpad(hidden, mask);
        using var fromInt = FlashPadding.Unpad(hidden, mask.to(torch.ScalarType.Int32));
        Assert.Equal([0.0, 4, 4, 6], TorchTest.Values(fromInt.CumulativeSeqlens));
        Assert.Equal(4, fromInt.MaxSeqlen);
        Assert.Equal(TorchTest.Values(fromBool.Unpadded), TorchTest.Values(fromInt.Unpadded));
    }

    /// <summary>pad(unpad(x) * 2) weighted by g and summed: x.grad is 2 g at real tokens and exactly 0 at the padding.</summary>
    [Fact]
    public void GradientsFlowThroughUnpadAndPad()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var random = new TestRandom();
        var x = TorchTest.Normal(random, [Batch, Seqlen, Heads, HeadDim]).requires_grad_(true);
        var weights = TorchTest.Normal(random, [Batch, Seqlen, Heads, HeadDim]);
        var mask = torch.tensor(HoleyMask, [Batch, Seqlen]);

        using var batch = FlashPadding.Unpad(x, mask);
        var padded = FlashPadding.Pad(batch.Unpadded.mul(2), batch.Indices, Batch, Seqlen);
        padded.mul(weights).sum().backward();

        Assert.NotNull(x.grad);
        var expected = weights.mul(2).mul(mask.unsqueeze(-1).unsqueeze(-1).to(torch.ScalarType.Float32));
        Assert.Equal(TorchTest.Values(expected), TorchTest.Values(x.grad!));
    }

    private static void Rejects(string paramName, Action action)
    {
        var exception = Assert.ThrowsAny<ArgumentException>(action);
        Assert.Equal(paramName, exception.ParamName);
    }

    [Fact]
    public void BadArgumentsNameTheArgument()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var hidden = TorchTest.Normal(new TestRandom(), [Batch, Seqlen, 6]);
        var mask = torch.tensor(HoleyMask, [Batch, Seqlen]);

        Rejects("attentionMask", () => FlashPadding.Unpad(hidden, torch.ones(Batch, Seqlen + 1)));
        Rejects("padded", () => FlashPadding.Unpad(torch.ones(Batch), mask));
        using var batch = FlashPadding.Unpad(hidden, mask);
        Rejects("indices", () => FlashPadding.Pad(batch.Unpadded, batch.Indices.narrow(0, 0, 3), Batch, Seqlen));
        Rejects("indices", () => FlashPadding.Pad(batch.Unpadded, batch.Indices, Batch, Seqlen - 1));
        Rejects("indices", () => FlashPadding.Pad(batch.Unpadded, batch.Indices.to(torch.ScalarType.Float32), Batch, Seqlen));
        Rejects("batch", () => FlashPadding.Pad(batch.Unpadded, batch.Indices, -1, Seqlen));
    }
}
