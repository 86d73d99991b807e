using System.Globalization;
using FlashAttn.Cpu;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>
/// What a cancelled ForwardInto leaves in the caller's buffers (its XML doc promises it): every query row of every head
/// holds either its previous contents (here the NaN poison) or its final values, the O row and its LSE together.
/// </summary>
[Collection(RunsAloneCollection.Name)]
public sealed class CancelledForwardIntoTests
{
    [Fact]
    public void EachRowIsEitherUntouchedOrFinal()
    {
        // 4.4 TFLOP: seconds even on 16 cores. Cancelled once 1024 rows are written rather than after a fixed delay (the first
        // call's JIT alone can take longer than that on 2 cores), so that some rows are done and most are not.
        const int seqlen = 65536, heads = 4, dim = 64;
        var random = new TestRandom();
        var q = MidRunCancellationTests.Noise(random, [1, seqlen, heads, dim]);
        var k = MidRunCancellationTests.Noise(random, [1, seqlen, 1, dim]);
        var v = MidRunCancellationTests.Noise(random, [1, seqlen, 1, dim]);
        float[] o = Enumerable.Repeat(float.NaN, seqlen * heads * dim).ToArray(), l = Enumerable.Repeat(float.NaN, heads * seqlen).ToArray();

        MidRunCancellation.AssertCancelledPromptly("ForwardInto",
            ct => FlashAttention.ForwardInto<float>(q, k, v, new TensorSpan<float>(o, [1, seqlen, heads, dim]), new TensorSpan<float>(l, [1, heads, seqlen]),
                null, ct),
            cancelWhen: () => l.Count(x => !float.IsNaN(x)) >= 1024);

        float[] qs = Flatten(q);
        var written = new List<(int Head, int Row)>();
        for (int h = 0; h < heads; h++)
            for (int i = 0; i < seqlen; i++)
            {
                var row = o.AsSpan((i * heads + h) * dim, dim);
                bool rowWritten = !float.IsNaN(l[h * seqlen + i]);
                int nanCount = 0;
                foreach (float x in row) if (float.IsNaN(x)) nanCount++;
                Assert.True(rowWritten ? nanCount == 0 : nanCount == dim,
                    $"head {h} row {i}: LSE {(rowWritten ? "written" : "untouched")} but {nanCount} of {dim} O elements untouched. {random}");
                if (rowWritten) written.Add((h, i));
            }
        TestContext.Current.TestOutputHelper?.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{written.Count} of {heads * seqlen} rows written before the cancellation"));
        if (written.Count == 0) return;

        // The final values of the written rows, recomputed by one uncancelled call over just those rows (all heads share
        // the one kv head, so they stack as rows of one head). Bit for bit, because the engine computes each block of
        // CpuTiling.QueryBlock rows on its own, and the stack keeps the written blocks whole and aligned.
        const int block = CpuTiling.QueryBlock;
        Assert.True(written.Count % block == 0 && written.Where((r, n) => r.Row % block != n % block).Any() == false,
            $"the written rows are not whole {block}-row blocks. {random}");
        var stacked = new float[written.Count * dim];
        for (int n = 0; n < written.Count; n++)
            qs.AsSpan((written[n].Row * heads + written[n].Head) * dim, dim).CopyTo(stacked.AsSpan(n * dim, dim));
        var expected = FlashAttention.Forward<float>(Tensor.Create(stacked, [1, written.Count, 1, dim]), k, v,
            cancellationToken: TestContext.Current.CancellationToken);
        float[] eo = Flatten(expected.Output), el = Flatten(expected.LogSumExp);
        for (int n = 0; n < written.Count; n++)
        {
            var (h, i) = written[n];
            Assert.True(BitConverter.SingleToInt32Bits(el[n]) == BitConverter.SingleToInt32Bits(l[h * seqlen + i]),
                $"head {h} row {i}: LSE {l[h * seqlen + i]} is not the final {el[n]}. {random}");
            Assert.True(eo.AsSpan(n * dim, dim).SequenceEqual(o.AsSpan((i * heads + h) * dim, dim)),
                $"head {h} row {i}: the O row is not the final one. {random}");
        }
    }

    private static float[] Flatten(Tensor<float> tensor)
    {
        var values = new float[tensor.FlattenedLength];
        tensor.FlattenTo(values);
        return values;
    }
}
