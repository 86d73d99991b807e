using System.Numerics.Tensors;
using FlashAttn.Cpu;
using FlashAttn.Validation;

namespace FlashAttn;

public static unsafe partial class FlashAttention
{
    /// <summary>
    /// Attention of q over a KV cache in host memory (flash-attn's <c>flash_attn_with_kvcache</c>), forward only: optionally
    /// appends k_new / v_new into the cache in place at each sequence's cache length, rotating them (and q) by rotary
    /// embeddings first, then attends over cache rows 0 .. cache_seqlens[b] + seqlen_new - 1, with causal and window masks
    /// aligned to the bottom-right corner of each sequence's (seqlen_q, cache_seqlens[b] + seqlen_new) score matrix.
    /// Every argument, including the values of cacheSeqlens, cacheBatchIndex and the block-table entries a sequence uses,
    /// is checked before anything is written to the cache. The append happens even when seqlen_q is 0.
    /// </summary>
    /// <remarks>
    /// Optional tensors are absent when left <c>default</c> (<see cref="ReadOnlyTensorSpan{T}.Rank"/> 0); an explicitly empty
    /// tensor (a length of 0 somewhere) is present. Optional spans are absent when empty; with batch 0, where every span is
    /// empty, cacheSeqlens counts as given.
    /// </remarks>
    /// <param name="q">(batch, seqlen_q, heads_q, headdim); float, System.Half or FlashAttn.BFloat16, headdim 1..256 and
    /// contiguous; other strides honoured.</param>
    /// <param name="kCache">(batch_cache, seqlen_cache, heads_kv, headdim), or with <paramref name="blockTable"/> a paged cache
    /// (num_blocks, page_size, heads_kv, headdim) (<c>k_cache</c>); written in place when k_new is given.</param>
    /// <param name="vCache">Same shape as kCache (<c>v_cache</c>); written in place when v_new is given.</param>
    /// <param name="kNew">Keys to append, (batch, seqlen_new, heads_kv, headdim) (<c>k</c>); default for none.</param>
    /// <param name="vNew">Values to append, shaped like kNew (<c>v</c>).</param>
    /// <param name="cacheSeqlens">(batch) keys already in each sequence's cache (<c>cache_seqlens</c>), each in
    /// [0, capacity - seqlen_new]; empty means the whole cache. Required with k_new.</param>
    /// <param name="cacheBatchIndex">(batch) cache row of each sequence (<c>cache_batch_idx</c>), each in [0, batch_cache);
    /// empty means row b. Not with a paged cache.</param>
    /// <param name="blockTable">(batch, max_blocks) page indices (<c>block_table</c>): key position j of sequence b is row
    /// j % page_size of page blockTable[b, j / page_size]. Default for a contiguous cache.</param>
    /// <param name="rotaryCos">(seqlen_ro, rotary_dim / 2) cosines (<c>rotary_cos</c>), seqlen_ro covering the cache; needs
    /// k_new. Keys are rotated at their cache position; q at cache_seqlens + i when causal or windowed, at cache_seqlens
    /// otherwise; positions past seqlen_ro use its last row.</param>
    /// <param name="rotarySin">Sines, shaped like rotaryCos (<c>rotary_sin</c>).</param>
    /// <param name="options">Causal, scale, window, softcap and ALiBi; dropout and probabilities are rejected.</param>
    /// <param name="cacheOptions">Rotary layout (<c>rotary_interleaved</c>); NumSplits is ignored on the CPU.</param>
    /// <param name="cancellationToken">Cancels long CPU work; a cancelled call may already have appended to the cache.</param>
    /// <returns>Output (batch, seqlen_q, heads_q, headdim) and the log-sum-exp (batch, heads_q, seqlen_q) (<c>return_softmax_lse</c>);
    /// a row that sees no key gets output 0 and log-sum-exp +inf.</returns>
    public static AttentionResult<T> ForwardWithKvCache<T>(ReadOnlyTensorSpan<T> q, TensorSpan<T> kCache, TensorSpan<T> vCache,
        ReadOnlyTensorSpan<T> kNew = default, ReadOnlyTensorSpan<T> vNew = default, ReadOnlySpan<int> cacheSeqlens = default,
        ReadOnlySpan<int> cacheBatchIndex = default, ReadOnlyTensorSpan<int> blockTable = default,
        ReadOnlyTensorSpan<T> rotaryCos = default, ReadOnlyTensorSpan<T> rotarySin = default,
        AttentionOptions? options = null, KvCacheOptions? cacheOptions = null, CancellationToken cancellationToken = default) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        cacheOptions ??= KvCacheOptions.Default;
        bool batchZero = q.Rank == 4 && q.Lengths[0] == 0;
        TensorArg qa = TensorArg.Of(q, nameof(q)), ka = TensorArg.Of<T>(kCache, nameof(kCache)), va = TensorArg.Of<T>(vCache, nameof(vCache));
        TensorArg? kn = Optional(kNew, nameof(kNew)), vn = Optional(vNew, nameof(vNew)), table = Optional(blockTable, nameof(blockTable));
        TensorArg? cos = Optional(rotaryCos, nameof(rotaryCos)), sin = Optional(rotarySin, nameof(rotarySin));
        TensorArg? seqlens = cacheSeqlens.IsEmpty && !batchZero ? null : new TensorArg(nameof(cacheSeqlens), [cacheSeqlens.Length], [1]);
        TensorArg? batchIndex = cacheBatchIndex.IsEmpty ? null : new TensorArg(nameof(cacheBatchIndex), [cacheBatchIndex.Length], [1]);
        var shape = KvCacheValidator.Validate(qa, ka, va, kn, vn, seqlens, batchIndex, table, cos, sin, options, cacheOptions, typeof(T));

        int[]? denseTable = null;
        if (table is not null)
        {
            denseTable = new int[shape.Batch * shape.MaxBlocksPerSequence];
            blockTable.FlattenTo(denseTable);
        }
        KvCacheValidator.HostValues(shape, cacheSeqlens, cacheBatchIndex, denseTable);

        var output = Tensor.CreateFromShape<T>(qa.Lengths, pinned: true);
        var lse = Tensor.CreateFromShape<float>([shape.Batch, shape.HeadsQ, shape.SeqlenQ], pinned: true);
        fixed (T* pq = q)
        fixed (T* pkc = kCache)
        fixed (T* pvc = vCache)
        fixed (T* pkn = kNew)
        fixed (T* pvn = vNew)
        fixed (T* pcos = rotaryCos)
        fixed (T* psin = rotarySin)
        {
            var operands = new KvCacheOperands<T>(
                Operand<T>.Of(pq, qa), Operand<T>.Of(pkc, ka), Operand<T>.Of(pvc, va),
                kn is { } k ? Operand<T>.Of(pkn, k) : default, vn is { } v ? Operand<T>.Of(pvn, v) : default,
                cos is { } c && sin is { } s ? new RotaryTable<T>(pcos, c, psin, s, cacheOptions.RotaryInterleaved) : default,
                Operand<T>.Of(Pin(output), Describe(output, "output")), LseOperand.Of(Pin(lse), Describe(lse, "logSumExp")));
            CpuKvCache.Run(shape, options, operands, seqlens is null ? null : cacheSeqlens.ToArray(),
                batchIndex is null ? null : cacheBatchIndex.ToArray(), denseTable, cancellationToken);
        }
        return new AttentionResult<T>(output, lse, null, null);

        static TensorArg? Optional<TE>(in ReadOnlyTensorSpan<TE> t, string name) => t.Rank == 0 ? null : TensorArg.Of(t, name);
    }
}
