using FlashAttn.Distributed;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>
/// Ring (context-parallel) attention with its ranks simulated in one process (issue 10, item 2): the chunk layout, and the
/// forward and gradients against the float64 reference under the tolerance rule, for 1 to 4 ranks, causal with and without
/// load balancing, sequences that do not split evenly, GQA and every element type.
/// </summary>
public sealed class RingAttentionTests
{
    [Theory]
    [InlineData(1, 10, false, false)]
    [InlineData(4, 103, false, false)]
    [InlineData(4, 103, true, false)]
    [InlineData(4, 103, true, true)]
    [InlineData(3, 7, true, true)]   // 6 chunks of one or two tokens
    [InlineData(8, 5, true, true)]   // more chunks than tokens: empty chunks
    public void EveryVisibleChunkPairIsComputedExactlyOnce(int ranks, int seqlen, bool causal, bool balanced)
    {
        var layout = new RingLayout(ranks, seqlen, causal, balanced);
        Assert.Equal(seqlen, Enumerable.Range(0, layout.Chunks).Sum(layout.ChunkLength));
        var seen = new Dictionary<(int, int), ChunkRelation>();
        for (int rank = 0; rank < ranks; rank++)
        {
            Assert.Equal(layout.Balanced ? 2 : 1, layout.ChunksOf(rank).Count);
            for (int step = 0; step < ranks; step++)
                foreach (var pair in layout.PairsOf(rank, step))
                {
                    Assert.Contains(pair.QueryChunk, layout.ChunksOf(rank));   // queries never leave their rank
                    Assert.True(seen.TryAdd((pair.QueryChunk, pair.KeyChunk), pair.Relation), $"pair {pair} computed twice");
                }
        }
        Assert.Equal(layout.Chunks * layout.Chunks, seen.Count);
        foreach (var ((queryChunk, keyChunk), relation) in seen)
        {
            var expected = !causal || keyChunk < queryChunk ? ChunkRelation.Full : keyChunk == queryChunk ? ChunkRelation.Diagonal : ChunkRelation.Skip;
            Assert.Equal(expected, relation);
        }
        long visible = Enumerable.Range(0, ranks).Sum(layout.VisiblePairsOf);
        Assert.Equal(causal ? (long)seqlen * (seqlen + 1) / 2 : (long)seqlen * seqlen, visible);
    }

    [Fact]
    public void BalancedCausalRingGivesEveryRankTheSameWork()
    {
        var balanced = new RingLayout(4, 4096, causal: true, balanced: true);
        var plain = new RingLayout(4, 4096, causal: true, balanced: false);
        var even = Enumerable.Range(0, 4).Select(balanced.VisiblePairsOf).ToArray();
        var skewed = Enumerable.Range(0, 4).Select(plain.VisiblePairsOf).ToArray();
        Assert.All(even, w => Assert.Equal(even[0], w));
        Assert.True(skewed.Max() > 5 * skewed.Min(), $"contiguous chunks: {string.Join(", ", skewed)}");
    }

    public static TheoryData<int, bool, bool, Dtype> Cases()
    {
        var data = new TheoryData<int, bool, bool, Dtype>();
        foreach (int ranks in new[] { 1, 2, 3, 4 })
            foreach (var (causal, balanced) in new[] { (false, false), (true, false), (true, true) })
                data.Add(ranks, causal, balanced, ranks == 3 ? Dtype.Fp16 : ranks == 4 ? Dtype.Bf16 : Dtype.Fp32);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void ForwardAndGradientsMatchTheReference(int ranks, bool causal, bool balanced, Dtype dtype)
    {
        // 97 tokens do not split evenly into 2, 3, 4, 6 or 8 chunks; 4 query heads on 2 kv heads.
        var problem = new Problem(2, 97, 97, 4, 2, 40);
        var options = new AttentionOptions { Causal = causal };
        switch (dtype)
        {
            case Dtype.Fp32: Check<float>(problem, options, ranks, balanced); break;
            case Dtype.Fp16: Check<Half>(problem, options, ranks, balanced); break;
            default: Check<BFloat16>(problem, options, ranks, balanced); break;
        }
    }

    [Fact]
    public void SoftcapAndScaleCarryThroughTheRing()
    {
        var problem = new Problem(1, 64, 64, 2, 2, 32);
        Check<float>(problem, new AttentionOptions { Causal = true, Softcap = 5f, SoftmaxScale = 0.4f }, ranks: 3, balanced: true);
    }

    [Fact]
    public void OptionsThatDependOnAbsolutePositionsAreRejected()
    {
        var inputs = Inputs<float>.Create(new Problem(1, 16, 16, 2, 2, 8));
        var ct = TestContext.Current.CancellationToken;
        ArgumentException Reject(AttentionOptions options) =>
            Assert.ThrowsAny<ArgumentException>(() => RingAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, 2, options, cancellationToken: ct));
        Assert.Equal("options", Reject(new AttentionOptions { WindowLeft = 4 }).ParamName);
        Assert.Equal("options", Reject(new AttentionOptions { DropoutProbability = 0.1f }).ParamName);
        Assert.Contains("ALiBi", Reject(new AttentionOptions { AlibiSlopes = System.Numerics.Tensors.Tensor.Create(new float[] { 0.5f, 0.25f }, [2]) }).Message);
        var cross = Inputs<float>.Create(new Problem(1, 16, 24, 2, 2, 8));
        Assert.Equal("k", Assert.ThrowsAny<ArgumentException>(() => RingAttention.Forward<float>(cross.QTensor, cross.KTensor, cross.VTensor, 2, cancellationToken: ct)).ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => RingAttention.Forward<float>(inputs.QTensor, inputs.KTensor, inputs.VTensor, 0, cancellationToken: ct));
    }

    private static void Check<T>(Problem problem, AttentionOptions options, int ranks, bool balanced) where T : unmanaged =>
        AttentionCheck.Backward(problem, options, Inputs<T>.Create(problem),
            run: (inputs, o) => RingAttention.Forward<T>(inputs.QTensor, inputs.KTensor, inputs.VTensor, ranks, o, balanced,
                TestContext.Current.CancellationToken),
            runBackward: (inputs, o, forward) => RingAttention.Backward<T>(inputs.DOutTensor, inputs.QTensor, inputs.KTensor, inputs.VTensor,
                forward.Output, forward.LogSumExp, ranks, o, balanced, TestContext.Current.CancellationToken));
}
