using FlashAttn.Tests.Infrastructure;
using FlashAttn.TorchSharp;
using TorchSharp;

namespace FlashAttn.Tests.TorchSharp;

/// <summary>
/// Repeated forward + backward through the adapter must not grow device memory: the gradient wrappers our autograd
/// functions hand to libtorch are created on the engine thread, outside any DisposeScope, and must be released by the
/// adapter (a training loop ran out of memory within 30 steps before they were). libtorch's caching allocator keeps
/// freed blocks, so the driver's used-memory figure is flat once the loop reuses them and grows when tensors leak.
/// </summary>
[Trait("Category", "TorchSharp")]
[Trait("Category", "Cuda")]
[Collection(TorchSharpCollection.Name)]
public sealed class TorchBackwardMemoryTests
{
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void RepeatedBackwardDoesNotGrowDeviceMemory(bool varlen)
    {
        var device = TorchSharpRequirement.SkipIfNoCuda();
        var random = new TestRandom();
        const int seqlen = 2048, heads = 16, dim = 128, warmup = 5, steps = 40;
        using var q = TorchTest.Leaf(TorchTest.Normal(random, [1, seqlen, heads, dim], device: torch.CUDA), torch.ScalarType.BFloat16);
        using var k = TorchTest.Leaf(TorchTest.Normal(random, [1, seqlen, heads, dim], device: torch.CUDA), torch.ScalarType.BFloat16);
        using var v = TorchTest.Leaf(TorchTest.Normal(random, [1, seqlen, heads, dim], device: torch.CUDA), torch.ScalarType.BFloat16);
        using var cu = torch.tensor(new[] { 0, 700, seqlen }, torch.ScalarType.Int32, torch.CUDA);
        long used = 0;
        for (int step = 0; step < warmup + steps; step++)
        {
            using (torch.NewDisposeScope())
            {
                var output = varlen
                    ? FlashAttentionTorch.AttentionVarlen(q.view(seqlen, heads, dim), k.view(seqlen, heads, dim), v.view(seqlen, heads, dim), cu, cu, 1348, 1348,
                        new AttentionOptions { Causal = true })
                    : FlashAttentionTorch.Attention(q, k, v, new AttentionOptions { Causal = true });
                BackwardFailure.Run(() => output.@float().square().mean().backward());
                q.grad?.zero_();
                k.grad?.zero_();
                v.grad?.zero_();
            }
            torch.cuda.synchronize();
            if (step == warmup - 1) used = device.GetMemoryInfo().TotalBytes - device.GetMemoryInfo().FreeBytes;
        }
        long grown = device.GetMemoryInfo().TotalBytes - device.GetMemoryInfo().FreeBytes - used;
        // A leak of the three 8 MiB gradients per step would add 960 MiB over the 40 steps.
        Assert.True(grown < 160L << 20, $"device memory grew by {grown >> 20} MiB over {steps} steps ({random})");
    }
}
