using FlashAttn.Validation;

namespace FlashAttn.Cpu;

/// <summary>The pinned operands of one CPU <c>flash_attn_with_kvcache</c> call; absent tensors are default (null pointers).</summary>
internal readonly record struct KvCacheOperands<T>(Operand<T> Q, Operand<T> KCache, Operand<T> VCache, Operand<T> KNew, Operand<T> VNew,
    RotaryTable<T> Rotary, Operand<T> Output, LseOperand LogSumExp) where T : unmanaged;

/// <summary>
/// <c>flash_attn_with_kvcache</c> on the CPU: rotate q, append (rotated) k_new / v_new into the cache, then run the tiled
/// forward with per-sequence key lengths len_b = cache_seqlens[b] + seqlen_new. q, the output and the LSE keep their
/// (batch, ...) layouts; only the keys are ragged, which <see cref="ProblemShape"/>'s KStart/KLength already express.
/// </summary>
internal static unsafe class CpuKvCache
{
    /// <param name="shape">Validated geometry.</param>
    /// <param name="options">Attention options (validated).</param>
    /// <param name="operands">Pinned tensors.</param>
    /// <param name="cacheSeqlens">cache_seqlens, or null; range-checked.</param>
    /// <param name="batchIndex">cache_batch_idx, or null; range-checked.</param>
    /// <param name="blockTable">Dense (batch, max_blocks) block table, or null; range-checked where used.</param>
    /// <param name="ct">Cancels the attention; the append has happened by then.</param>
    public static void Run<T>(KvCacheShape shape, AttentionOptions options, KvCacheOperands<T> operands, int[]? cacheSeqlens, int[]? batchIndex,
        int[]? blockTable, CancellationToken ct) where T : unmanaged
    {
        ct.ThrowIfCancellationRequested();
        var seqlens = cacheSeqlens ?? new int[shape.Batch];
        var lengths = new int[shape.Batch];
        for (int b = 0; b < shape.Batch; b++) lengths[b] = shape.SequenceLength(seqlens.AsSpan(), b);
        var slots = new CacheSlots(shape, batchIndex, blockTable);

        using var rotatedQ = operands.Rotary.Enabled ? RotateQueries(shape, options, operands, seqlens) : null;
        var q = rotatedQ is null ? operands.Q : DenseQ(shape, rotatedQ);
        if (shape.SeqlenNew > 0)
            KvCacheAppend.Run(shape, slots, seqlens, operands.Rotary, operands.KNew, operands.VNew, operands.KCache, operands.VCache);

        using var keys = KvCacheGather<T>.Create(shape, slots, lengths, operands.KCache, operands.VCache, ct);
        var problem = new ProblemShape
        {
            HeadsQ = shape.HeadsQ,
            HeadsKv = shape.HeadsKv,
            HeadDim = shape.HeadDim,
            IsVarlen = false, // q, O and LSE are batch-strided; only K/V rows are located by KStart
            QStart = new int[shape.Batch],
            QLength = Enumerable.Repeat(shape.SeqlenQ, shape.Batch).ToArray(),
            KStart = keys.KStart,
            KLength = lengths,
            TotalQ = shape.SeqlenQ,
            TotalK = lengths.Sum(),
            MaxSeqlenQ = shape.SeqlenQ,
            MaxSeqlenK = lengths.Length == 0 ? 0 : lengths.Max(),
        };
        var settings = AttentionSettings.Resolve(options, problem, null);
        CpuAttention.Forward(problem, settings, q, keys.K, keys.V, operands.Output, operands.LogSumExp, null, ct);
    }

    /// <summary>q rotated into a dense (batch, seqlen_q, heads_q, d) buffer: at cache_seqlens[b] + i when some key can be
    /// masked (causal or a window: query i sits at that position), else every row at cache_seqlens[b] (flash-attn's rule).</summary>
    private static ElementBuffer<T> RotateQueries<T>(KvCacheShape shape, AttentionOptions options, KvCacheOperands<T> operands, int[] seqlens)
        where T : unmanaged
    {
        var buffer = new ElementBuffer<T>((long)shape.Batch * shape.SeqlenQ * shape.HeadsQ * shape.HeadDim);
        var dense = DenseQ(shape, buffer);
        for (int b = 0; b < shape.Batch; b++)
            for (int i = 0; i < shape.SeqlenQ; i++)
            {
                int position = seqlens[b] + (options.HasMask ? i : 0);
                for (int h = 0; h < shape.HeadsQ; h++)
                    operands.Rotary.Apply(operands.Q.At(b, i, h), dense.At(b, i, h), shape.HeadDim, position);
            }
        return buffer;
    }

    private static Operand<T> DenseQ<T>(KvCacheShape shape, ElementBuffer<T> buffer) where T : unmanaged
    {
        nint row = (nint)shape.HeadsQ * shape.HeadDim;
        return new Operand<T>(buffer.Pointer, row * shape.SeqlenQ, row, shape.HeadDim);
    }
}
