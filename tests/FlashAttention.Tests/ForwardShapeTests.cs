using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>Forward against the float64 reference over odd head dims, sequence lengths, batches and GQA ratios, no mask.</summary>
public sealed class ForwardShapeTests
{
    // (batch, seqlen_q, seqlen_k, heads_q, heads_kv, headdim)
    public static TheoryData<Dtype, int, int, int, int, int, int> Shapes()
    {
        var data = new TheoryData<Dtype, int, int, int, int, int, int>();
        foreach (var dtype in Enum.GetValues<Dtype>())
        {
            data.Add(dtype, 1, 1, 1, 1, 1, 1);
            data.Add(dtype, 1, 2, 3, 1, 1, 1);
            data.Add(dtype, 1, 17, 17, 2, 2, 8);
            data.Add(dtype, 2, 113, 113, 2, 2, 40);
            data.Add(dtype, 1, 17, 200, 3, 3, 59);
            data.Add(dtype, 1, 200, 17, 2, 2, 96);
            data.Add(dtype, 2, 113, 17, 4, 2, 111);   // GQA 4:2
            data.Add(dtype, 1, 64, 113, 6, 1, 40);    // MQA-like 6:1
            data.Add(dtype, 1, 1, 200, 2, 1, 256);
            data.Add(dtype, 1, 113, 1, 1, 1, 256);
            data.Add(dtype, 2, 65, 129, 1, 1, 64);    // one row / one key past a block edge
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void ForwardMatchesReference(Dtype dtype, int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim) =>
        DtypeDispatch.Forward(dtype, new Problem(batch, seqlenQ, seqlenK, headsQ, headsKv, headDim));

    [Fact]
    public void LongCausalSequence() =>
        DtypeDispatch.Forward(Dtype.Fp16, new Problem(1, 1023, 1023, 1, 1, 64), new AttentionOptions { Causal = true });
}
