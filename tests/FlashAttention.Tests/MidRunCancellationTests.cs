using System.Globalization;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>
/// Long CPU calls stop soon after their token is cancelled mid-run (CancellationTests covers tokens cancelled before the
/// call). Each shape is seconds of fp32 work on 16 cores (a minute or so on 2), cancelled after 100 ms: the call must
/// throw OperationCanceledException for that token within 2 s. The values of the inputs do not matter (no loop depends on
/// them), so they are uniform noise, and backward gets a made-up O and LSE instead of a forward that would take seconds.
/// </summary>
[Collection(RunsAloneCollection.Name)]
public sealed class MidRunCancellationTests
{
    private const int Dim = 64;

    [Fact]
    public void ForwardStopsPromptly()
    {
        // MQA with 32k keys: 1.1 TFLOP.
        var random = new TestRandom();
        var q = Noise(random, [1, 32768, 4, Dim]);
        var k = Noise(random, [1, 32768, 1, Dim]);
        var v = Noise(random, [1, 32768, 1, Dim]);
        Report(MidRunCancellation.AssertCancelledPromptly("Forward", ct => FlashAttention.Forward<float>(q, k, v, null, ct)));
    }

    [Fact]
    public void BackwardStopsPromptly()
    {
        // 64k tokens, one kv head, head dim 32: 2.7 TFLOP in only 8 tasks (key-block groups), each seconds of work on its
        // own, so this needs the token checked inside a task, not only between tasks (it stopped 2.7 s late before that).
        var random = new TestRandom();
        nint[] qShape = [1, 65536, 2, 32], kvShape = [1, 65536, 1, 32];
        var q = Noise(random, qShape);
        var k = Noise(random, kvShape);
        var v = Noise(random, kvShape);
        var dOut = Noise(random, qShape);
        var output = Noise(random, qShape);
        var lse = Tensor.Create(Enumerable.Repeat(12f, 2 * 65536).ToArray(), [1, 2, 65536]);
        Report(MidRunCancellation.AssertCancelledPromptly("Backward",
            ct => FlashAttention.Backward<float>(dOut, q, k, v, output, lse, cancellationToken: ct)));
    }

    [Fact]
    public void VarlenForwardStopsPromptly()
    {
        // Three sequences of 20000, 12000 and 24000 tokens: 1.1 TFLOP.
        var random = new TestRandom();
        int[] cuSeqlens = [0, 20000, 32000, 56000];
        var q = Noise(random, [56000, 4, Dim]);
        var k = Noise(random, [56000, 1, Dim]);
        var v = Noise(random, [56000, 1, Dim]);
        Report(MidRunCancellation.AssertCancelledPromptly("ForwardVarlen",
            ct => FlashAttention.ForwardVarlen<float>(q, k, v, cuSeqlens, cuSeqlens, 24000, 24000, null, ct)));
    }

    [Fact]
    public void KvCacheForwardStopsPromptly()
    {
        // A long prefill over a 32k cache, rows swapped by cache_batch_idx (so the cache is gathered first): 1.1 TFLOP.
        var random = new TestRandom();
        var q = Noise(random, [2, 16384, 4, Dim]);
        var kCache = Noise(random, [2, 32768, 1, Dim]);
        var vCache = Noise(random, [2, 32768, 1, Dim]);
        int[] batchIndex = [1, 0];
        Report(MidRunCancellation.AssertCancelledPromptly("ForwardWithKvCache",
            ct => FlashAttention.ForwardWithKvCache<float>(q, kCache, vCache, cacheBatchIndex: batchIndex, cancellationToken: ct)));
    }

    internal static Tensor<float> Noise(TestRandom random, nint[] shape)
    {
        long count = 1;
        foreach (var n in shape) count *= n;
        return Tensor.Create(random.Uniform(count, -1f, 1f), shape);
    }

    private static void Report(TimeSpan latency) =>
        TestContext.Current.TestOutputHelper?.WriteLine(string.Create(CultureInfo.InvariantCulture, $"stopped {latency.TotalMilliseconds:0} ms after the cancellation"));
}
