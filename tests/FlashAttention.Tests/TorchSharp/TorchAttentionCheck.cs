using System.Globalization;
using FlashAttn.Tests.Infrastructure;
using FlashAttn.TorchSharp;
using TorchSharp;

namespace FlashAttn.Tests.TorchSharp;

/// <summary>How a case hands q, k, v to the adapter.</summary>
public enum TorchPacking
{
    Separate,
    QkvPacked,
    KvPacked,
}

/// <summary>
/// Runs the adapter forward and backward (through torch's autograd, <c>loss.backward()</c>) and holds the output and the
/// gradients of q, k and v to DESIGN.md's rule against TorchSharp's own unfused attention: the reference in float64 and the
/// naive baseline in the precision under test, both differentiated by torch's autograd with the same loss
/// sum(out * dO) for a random dO.
/// </summary>
internal static class TorchAttentionCheck
{
    public static void ForwardBackward(TorchPacking packing, int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim,
        bool causal, torch.ScalarType dtype, torch.Device device, bool backward = true, double? scale = null)
    {
        var random = new TestRandom();
        string context = string.Create(CultureInfo.InvariantCulture,
            $"[{packing}, {dtype} on {device}, batch {batch}, seqlen {seqlenQ}x{seqlenK}, heads {headsQ}/{headsKv}, d {headDim}, causal {causal}, scale {scale?.ToString(CultureInfo.InvariantCulture) ?? "default"}, seed {random.Seed}]");
        using var scope = torch.NewDisposeScope();
        var q = TorchTest.Normal(random, [batch, seqlenQ, headsQ, headDim]);
        var k = TorchTest.Normal(random, [batch, seqlenK, headsKv, headDim]);
        var v = TorchTest.Normal(random, [batch, seqlenK, headsKv, headDim]);
        var dOut = TorchTest.Normal(random, [batch, seqlenQ, headsQ, headDim]);
        var options = new AttentionOptions { Causal = causal, SoftmaxScale = scale is null ? null : (float)scale };

        // Implementation under test, in dtype on device.
        var (output, grads) = RunAdapter(packing, q, k, v, dOut, options, dtype, device, backward);

        // Reference (float64, CPU) and naive baseline (dtype, device), both through torch autograd.
        var (refOutput, refGrads) = RunTorch(q, k, v, dOut, causal, scale, torch.ScalarType.Float64, torch.CPU, backward);
        var (naiveOutput, naiveGrads) = RunTorch(q, k, v, dOut, causal, scale, dtype, device, backward);

        double floor = FloorUnit(dtype);
        Tolerance.AssertClose("output", TorchTest.Values(output), TorchTest.Values(refOutput), TorchTest.Values(naiveOutput), floor, context);
        if (!backward)
            return;
        string[] names = ["dq", "dk", "dv"];
        for (int i = 0; i < 3; i++)
            Tolerance.AssertClose(names[i], TorchTest.Values(grads[i]), TorchTest.Values(refGrads[i]), TorchTest.Values(naiveGrads[i]), floor, context);
    }

    public static double FloorUnit(torch.ScalarType dtype) => dtype switch
    {
        torch.ScalarType.Float32 => Precision<float>.FloorUnit,
        torch.ScalarType.Float16 => Precision<Half>.FloorUnit,
        torch.ScalarType.BFloat16 => Precision<BFloat16>.FloorUnit,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, null),
    };

    /// <summary>The adapter's output and dq, dk, dv (taken apart from the packed gradients where the inputs were packed).</summary>
    public static (torch.Tensor Output, torch.Tensor[] Grads) RunAdapter(TorchPacking packing, torch.Tensor q, torch.Tensor k, torch.Tensor v,
        torch.Tensor dOut, AttentionOptions options, torch.ScalarType dtype, torch.Device device, bool backward = true)
    {
        torch.Tensor Leaf(torch.Tensor t) => t.to(dtype, device).detach().requires_grad_(true);
        torch.Tensor output;
        Func<torch.Tensor[]> grads;
        switch (packing)
        {
            case TorchPacking.QkvPacked:
            {
                Assert.True(q.shape[1] == k.shape[1] && q.shape[2] == k.shape[2], "qkv packing needs seqlen_q = seqlen_k and heads_q = heads_kv");
                var qkv = Leaf(torch.stack([q, k, v], 2));
                output = FlashAttentionTorch.AttentionQkvPacked(qkv, options);
                grads = () => [qkv.grad!.select(2, 0), qkv.grad!.select(2, 1), qkv.grad!.select(2, 2)];
                break;
            }
            case TorchPacking.KvPacked:
            {
                var ql = Leaf(q);
                var kv = Leaf(torch.stack([k, v], 2));
                output = FlashAttentionTorch.AttentionKvPacked(ql, kv, options);
                grads = () => [ql.grad!, kv.grad!.select(2, 0), kv.grad!.select(2, 1)];
                break;
            }
            default:
            {
                var ql = Leaf(q);
                var kl = Leaf(k);
                var vl = Leaf(v);
                output = FlashAttentionTorch.Attention(ql, kl, vl, options);
                grads = () => [ql.grad!, kl.grad!, vl.grad!];
                break;
            }
        }
        Assert.Equal(q.shape, output.shape);
        Assert.Equal(dtype, output.dtype);
        Assert.Equal(device.type, output.device_type);
        if (!backward)
            return (output, []);
        using var loss = (output * dOut.to(dtype, device)).sum();
        BackwardFailure.Run(() => loss.backward());
        var result = grads();
        foreach (var grad in result)
            Assert.Equal(dtype, grad.dtype);
        return (output, result);
    }

    /// <summary>TorchSharp's unfused attention in <paramref name="dtype"/> on <paramref name="device"/>, with torch's own autograd.</summary>
    public static (torch.Tensor Output, torch.Tensor[] Grads) RunTorch(torch.Tensor q, torch.Tensor k, torch.Tensor v, torch.Tensor dOut,
        bool causal, double? scale, torch.ScalarType dtype, torch.Device device, bool backward = true)
    {
        var ql = TorchTest.Leaf(q.to(device), dtype);
        var kl = TorchTest.Leaf(k.to(device), dtype);
        var vl = TorchTest.Leaf(v.to(device), dtype);
        var output = TorchReference.Attention(ql, kl, vl, causal, scale);
        if (!backward)
            return (output, []);
        using var loss = (output * dOut.to(dtype, device)).sum();
        loss.backward();
        return (output, [ql.grad!, kl.grad!, vl.grad!]);
    }
}
