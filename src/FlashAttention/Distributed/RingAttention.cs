using System.Buffers;
using System.Numerics.Tensors;
using FlashAttn.Cpu;

namespace FlashAttn.Distributed;

/// <summary>
/// Context-parallel ("ring") attention over the CPU path, with the ranks simulated in one process: each rank keeps its query
/// chunks (<see cref="RingLayout"/>) and, step by step, attends to the key/value chunks that reach it around the ring; the
/// partial outputs merge by their log-sum-exps. Backward recomputes each pair against the merged O and LSE, so each pair's
/// dQ stays with the query chunk's rank and its dK and dV travel with the key/value chunk. This is the algorithm a multi-GPU
/// driver runs with the ring's hops as NCCL send/recv; here every hop is an index, so the merge and the chunk masks are
/// tested against unsplit attention on any machine.
/// <para>Self-attention only (seqlen_q = seqlen_k). Causal or not, softcap and the softmax scale are supported; windows, ALiBi
/// and dropout are position- or element-dependent across chunks and are rejected.</para>
/// </summary>
public static class RingAttention
{
    /// <summary>The forward: output (batch, seqlen, heads_q, head_dim) and LSE (batch, heads_q, seqlen), as unsplit attention.</summary>
    /// <param name="q">(batch, seqlen, heads_q, head_dim).</param>
    /// <param name="k">(batch, seqlen, heads_kv, head_dim): the same sequence as q.</param>
    /// <param name="v">Shaped like k.</param>
    /// <param name="ranks">Ranks in the ring.</param>
    /// <param name="options">Causal, scale, softcap; null for the defaults.</param>
    /// <param name="balanced">With a causal mask, mirror the chunks so every rank does the same work.</param>
    /// <param name="cancellationToken">Cancels the CPU work.</param>
    public static AttentionResult<T> Forward<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k, ReadOnlyTensorSpan<T> v, int ranks,
        AttentionOptions? options = null, bool balanced = true, CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var layout = Layout(q, k, ranks, options, balanced);
        int batch = (int)q.Lengths[0], seqlen = (int)q.Lengths[1], heads = (int)q.Lengths[2], headDim = (int)q.Lengths[3];
        var merge = new PartialMerge(batch * heads * seqlen, headDim);
        var row = new float[headDim];
        foreach (var (pair, chunkOptions) in Work(layout, options))
        {
            cancellationToken.ThrowIfCancellationRequested();
            int q0 = layout.ChunkStart(pair.QueryChunk), length = layout.ChunkLength(pair.QueryChunk);
            var part = FlashAttention.Forward(Chunk(q, layout, pair.QueryChunk), Chunk(k, layout, pair.KeyChunk), Chunk(v, layout, pair.KeyChunk),
                chunkOptions, cancellationToken);
            float[] output = ToFloats<T>(part.Output), lse = ToFloats<float>(part.LogSumExp);
            for (int b = 0; b < batch; b++)
                for (int h = 0; h < heads; h++)
                    for (int i = 0; i < length; i++)
                    {
                        output.AsSpan((int)((((long)b * length + i) * heads + h) * headDim), headDim).CopyTo(row);
                        merge.Add((b * heads + h) * seqlen + q0 + i, row, lse[(b * heads + h) * length + i]);
                    }
        }

        var o = new float[(long)batch * seqlen * heads * headDim];
        var l = new float[batch * heads * seqlen];
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < heads; h++)
                for (int i = 0; i < seqlen; i++)
                {
                    int r = (b * heads + h) * seqlen + i;
                    merge.Output(r).CopyTo(o.AsSpan((int)((((long)b * seqlen + i) * heads + h) * headDim), headDim));
                    l[r] = merge.Lse(r);
                }
        return new AttentionResult<T>(FromFloats<T>(o, [batch, seqlen, heads, headDim]), Tensor.Create(l, [batch, heads, seqlen]), null, null);
    }

    /// <summary>Gradients of <see cref="Forward{T}"/>, given its output and LSE: dQ like q, dK and dV like k and v.</summary>
    public static AttentionGradients<T> Backward<T>(ReadOnlyTensorSpan<T> dOut, ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k,
        ReadOnlyTensorSpan<T> v, ReadOnlyTensorSpan<T> output, ReadOnlyTensorSpan<float> logSumExp, int ranks, AttentionOptions? options = null,
        bool balanced = true, CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        var layout = Layout(q, k, ranks, options, balanced);
        if (!dOut.Lengths.SequenceEqual(q.Lengths)) throw new ArgumentException("dOut must be shaped like q.", nameof(dOut));
        if (!output.Lengths.SequenceEqual(q.Lengths)) throw new ArgumentException("output must be shaped like q (Forward's output).", nameof(output));
        int batch = (int)q.Lengths[0], seqlen = (int)q.Lengths[1], heads = (int)q.Lengths[2], headDim = (int)q.Lengths[3];
        int headsKv = (int)k.Lengths[2];
        if (logSumExp.Rank != 3 || logSumExp.Lengths[0] != batch || logSumExp.Lengths[1] != heads || logSumExp.Lengths[2] != seqlen)
            throw new ArgumentException($"logSumExp must be (batch, heads_q, seqlen) = ({batch}, {heads}, {seqlen}), as Forward returns it.", nameof(logSumExp));
        var dq = new float[(long)batch * seqlen * heads * headDim];
        var dk = new float[(long)batch * seqlen * headsKv * headDim];
        var dv = new float[dk.Length];
        foreach (var (pair, chunkOptions) in Work(layout, options))
        {
            cancellationToken.ThrowIfCancellationRequested();
            var grads = FlashAttention.Backward(Chunk(dOut, layout, pair.QueryChunk), Chunk(q, layout, pair.QueryChunk),
                Chunk(k, layout, pair.KeyChunk), Chunk(v, layout, pair.KeyChunk), Chunk(output, layout, pair.QueryChunk),
                LseChunk(logSumExp, layout, pair.QueryChunk), chunkOptions, null, cancellationToken);
            AddRows(dq, ToFloats<T>(grads.DQ), layout.ChunkStart(pair.QueryChunk), layout.ChunkLength(pair.QueryChunk), batch, seqlen, heads * headDim);
            AddRows(dk, ToFloats<T>(grads.DK), layout.ChunkStart(pair.KeyChunk), layout.ChunkLength(pair.KeyChunk), batch, seqlen, headsKv * headDim);
            AddRows(dv, ToFloats<T>(grads.DV), layout.ChunkStart(pair.KeyChunk), layout.ChunkLength(pair.KeyChunk), batch, seqlen, headsKv * headDim);
        }
        return new AttentionGradients<T>(FromFloats<T>(dq, [batch, seqlen, heads, headDim]), FromFloats<T>(dk, [batch, seqlen, headsKv, headDim]),
            FromFloats<T>(dv, [batch, seqlen, headsKv, headDim]));
    }

    private static RingLayout Layout<T>(ReadOnlyTensorSpan<T> q, ReadOnlyTensorSpan<T> k, int ranks, AttentionOptions options, bool balanced)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(ranks, 1);
        if (q.Rank != 4) throw new ArgumentException("q must be (batch, seqlen, heads_q, head_dim).", nameof(q));
        if (k.Rank != 4 || k.Lengths[1] != q.Lengths[1])
            throw new ArgumentException("Ring attention is self-attention: k must be (batch, seqlen, heads_kv, head_dim) over q's sequence.", nameof(k));
        if (options.WindowLeft >= 0 || options.WindowRight >= 0)
            throw new ArgumentException("Ring attention does not support sliding windows; use FlashAttention.Forward.", nameof(options));
        if (options.AlibiSlopes is not null)
            throw new ArgumentException("Ring attention does not support ALiBi (its bias depends on absolute positions); use FlashAttention.Forward.", nameof(options));
        if (options.DropoutProbability > 0f)
            throw new ArgumentException("Ring attention does not support dropout; use FlashAttention.Forward.", nameof(options));
        if (options.ReturnProbabilities)
            throw new ArgumentException("Ring attention does not return probabilities.", nameof(options));
        return new RingLayout(ranks, (int)q.Lengths[1], options.Causal, balanced);
    }

    /// <summary>Every rank's pairs over every ring step, skipped causal pairs left out, each with the options it runs with.</summary>
    private static IEnumerable<(ChunkPair Pair, AttentionOptions Options)> Work(RingLayout layout, AttentionOptions options)
    {
        var full = options with { Causal = false };
        var diagonal = options with { Causal = true };
        for (int rank = 0; rank < layout.Ranks; rank++)
            for (int step = 0; step < layout.Ranks; step++)
                foreach (var pair in layout.PairsOf(rank, step))
                    if (pair.Relation != ChunkRelation.Skip && layout.ChunkLength(pair.QueryChunk) > 0 && layout.ChunkLength(pair.KeyChunk) > 0)
                        yield return (pair, pair.Relation == ChunkRelation.Diagonal ? diagonal : full);
    }

    private static ReadOnlyTensorSpan<T> Chunk<T>(ReadOnlyTensorSpan<T> x, RingLayout layout, int chunk)
    {
        int start = layout.ChunkStart(chunk);
        return x.Slice([NRange.All, new NRange(start, start + layout.ChunkLength(chunk)), NRange.All, NRange.All]);
    }

    /// <summary>LSE[:, :, chunk] as a dense (batch, heads, length) tensor.</summary>
    private static Tensor<float> LseChunk(ReadOnlyTensorSpan<float> lse, RingLayout layout, int chunk)
    {
        int start = layout.ChunkStart(chunk), length = layout.ChunkLength(chunk);
        var slice = lse.Slice([NRange.All, NRange.All, new NRange(start, start + length)]);
        var dense = new float[slice.FlattenedLength];
        slice.FlattenTo(dense);
        return Tensor.Create(dense, [lse.Lengths[0], lse.Lengths[1], length]);
    }

    /// <summary>Adds a (batch, length, width) chunk into rows [start, start + length) of a (batch, seqlen, width) accumulator.</summary>
    private static void AddRows(float[] accumulator, float[] chunk, int start, int length, int batch, int seqlen, int width)
    {
        for (int b = 0; b < batch; b++)
        {
            var source = chunk.AsSpan(b * length * width, length * width);
            var target = accumulator.AsSpan((b * seqlen + start) * width, length * width);
            TensorPrimitives.Add(target, source, target);
        }
    }

    private static unsafe float[] ToFloats<T>(ReadOnlyTensorSpan<T> x) where T : unmanaged
    {
        var values = new T[x.FlattenedLength];
        x.FlattenTo(values);
        var floats = new float[values.Length];
        fixed (T* source = values)
        fixed (float* target = floats)
            Elements.ToFloat(source, target, values.Length);
        return floats;
    }

    private static unsafe Tensor<T> FromFloats<T>(float[] values, ReadOnlySpan<nint> lengths) where T : unmanaged
    {
        var converted = new T[values.Length];
        fixed (float* source = values)
        fixed (T* target = converted)
            Elements.FromFloat(source, target, values.Length);
        return Tensor.Create(converted, lengths);
    }
}
