using FlashAttn.Cuda;
using FlashAttn.Validation;

namespace FlashAttn;

public static partial class FlashAttention
{
    /// <summary>
    /// Attention of q over a KV cache in GPU memory (flash-attn's <c>flash_attn_with_kvcache</c>), forward only: optionally
    /// appends k_new / v_new into the cache in place at each sequence's cache length, rotating them (and q) by rotary
    /// embeddings first, then attends over cache rows 0 .. cache_seqlens[b] + seqlen_new - 1. The key dimension is split
    /// across thread blocks (flash-decoding) and the partial results merged by log-sum-exp; query heads that share a KV head
    /// are packed into one tile. Launches asynchronously; device-side lengths, indices and block tables are never read back
    /// (the kernels clamp them to the cache).
    /// </summary>
    /// <param name="q">(batch, seqlen_q, heads_q, headdim), System.Half or BFloat16, headdim 1..256 and contiguous.</param>
    /// <param name="kCache">(batch_cache, seqlen_cache, heads_kv, headdim), or with <paramref name="blockTable"/> a paged cache
    /// (num_blocks, page_size, heads_kv, headdim); written in place when k_new is given.</param>
    /// <param name="vCache">Same shape as kCache.</param>
    /// <param name="kNew">Keys to append, (batch, seqlen_new, heads_kv, headdim); null for none (<c>k</c>).</param>
    /// <param name="vNew">Values to append, shaped like kNew (<c>v</c>).</param>
    /// <param name="cacheSeqlens">(batch) int32 keys already in each sequence's cache (<c>cache_seqlens</c>); null means the whole
    /// cache. Required with k_new.</param>
    /// <param name="cacheBatchIndex">(batch) int32 cache row of each sequence (<c>cache_batch_idx</c>); null means row b.
    /// Not with a paged cache.</param>
    /// <param name="blockTable">(batch, max_blocks) int32 page indices (<c>block_table</c>); null for a contiguous cache.</param>
    /// <param name="rotaryCos">(seqlen_ro, rotary_dim / 2) cosines (<c>rotary_cos</c>), seqlen_ro covering the cache; needs k_new.
    /// q is rotated at positions cache_seqlens + i when causal or windowed, at cache_seqlens otherwise.</param>
    /// <param name="rotarySin">Sines, shaped like rotaryCos (<c>rotary_sin</c>).</param>
    /// <param name="options">Causal, scale, window, softcap and ALiBi; dropout and probabilities are rejected.</param>
    /// <param name="cacheOptions">Rotary layout and the number of splits.</param>
    /// <param name="stream">The stream to launch on; null for the legacy default stream.</param>
    /// <returns>Output shaped like q and the log-sum-exp (batch, heads_q, seqlen_q) (<c>return_softmax_lse</c>).</returns>
    public static CudaAttentionResult<T> ForwardWithKvCache<T>(CudaTensor<T> q, CudaTensor<T> kCache, CudaTensor<T> vCache,
        CudaTensor<T>? kNew = null, CudaTensor<T>? vNew = null, CudaTensor<int>? cacheSeqlens = null, CudaTensor<int>? cacheBatchIndex = null,
        CudaTensor<int>? blockTable = null, CudaTensor<T>? rotaryCos = null, CudaTensor<T>? rotarySin = null,
        AttentionOptions? options = null, KvCacheOptions? cacheOptions = null, CudaStream? stream = null) where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        cacheOptions ??= KvCacheOptions.Default;
        var shape = ValidateKvCache(q, kCache, vCache, kNew, vNew, cacheSeqlens, cacheBatchIndex, blockTable, rotaryCos, rotarySin, options, cacheOptions);
        var output = CudaTensor<T>.Allocate(q.Lengths);
        CudaTensor<float>? lse = null;
        try
        {
            lse = CudaTensor<float>.Allocate([shape.Batch, shape.HeadsQ, shape.SeqlenQ]);
            CudaKvCache.Run(shape, options, cacheOptions, new KvCacheTensors<T>(q, kCache, vCache, kNew, vNew, cacheSeqlens, cacheBatchIndex,
                blockTable, rotaryCos, rotarySin, output, lse), stream);
            return new CudaAttentionResult<T>(output, lse, null, null);
        }
        catch
        {
            output.Dispose();
            lse?.Dispose();
            throw;
        }
    }

    /// <summary>
    /// <see cref="ForwardWithKvCache{T}(CudaTensor{T}, CudaTensor{T}, CudaTensor{T}, CudaTensor{T}, CudaTensor{T}, CudaTensor{int},
    /// CudaTensor{int}, CudaTensor{int}, CudaTensor{T}, CudaTensor{T}, AttentionOptions, KvCacheOptions, CudaStream)"/> into
    /// caller-owned tensors (flash-attn's <c>out=</c>), so a decoding loop allocates nothing per step; nothing is written when
    /// validation fails.
    /// </summary>
    /// <param name="q">(batch, seqlen_q, heads_q, headdim).</param>
    /// <param name="kCache">The key cache (see ForwardWithKvCache).</param>
    /// <param name="vCache">The value cache.</param>
    /// <param name="output">Receives O, shaped like q, headdim contiguous.</param>
    /// <param name="logSumExp">Receives the fp32 log-sum-exp (batch, heads_q, seqlen_q), last dimension contiguous; null to skip it.</param>
    /// <param name="kNew">Keys to append; null for none.</param>
    /// <param name="vNew">Values to append.</param>
    /// <param name="cacheSeqlens">(batch) int32 cache lengths; null for the whole cache.</param>
    /// <param name="cacheBatchIndex">(batch) int32 cache rows; null for row b.</param>
    /// <param name="blockTable">(batch, max_blocks) int32 page indices; null for a contiguous cache.</param>
    /// <param name="rotaryCos">(seqlen_ro, rotary_dim / 2) cosines.</param>
    /// <param name="rotarySin">Sines.</param>
    /// <param name="options">Attention options.</param>
    /// <param name="cacheOptions">Rotary layout and splits.</param>
    /// <param name="stream">The stream to launch on; null for the legacy default stream.</param>
    public static void ForwardWithKvCacheInto<T>(CudaTensor<T> q, CudaTensor<T> kCache, CudaTensor<T> vCache, CudaTensor<T> output,
        CudaTensor<float>? logSumExp, CudaTensor<T>? kNew = null, CudaTensor<T>? vNew = null, CudaTensor<int>? cacheSeqlens = null,
        CudaTensor<int>? cacheBatchIndex = null, CudaTensor<int>? blockTable = null, CudaTensor<T>? rotaryCos = null,
        CudaTensor<T>? rotarySin = null, AttentionOptions? options = null, KvCacheOptions? cacheOptions = null, CudaStream? stream = null)
        where T : unmanaged
    {
        options ??= AttentionOptions.Default;
        cacheOptions ??= KvCacheOptions.Default;
        var shape = ValidateKvCache(q, kCache, vCache, kNew, vNew, cacheSeqlens, cacheBatchIndex, blockTable, rotaryCos, rotarySin, options, cacheOptions);
        ArgumentNullException.ThrowIfNull(output);
        var oa = Describe(output, nameof(output));
        ShapeValidator.SameLengths(Describe(q, nameof(q)), oa, nameof(output), mustMatch: nameof(q));
        ShapeValidator.LastDimContiguous(oa);
        if (logSumExp is not null)
        {
            nint[] expected = [shape.Batch, shape.HeadsQ, shape.SeqlenQ];
            if (!logSumExp.Lengths.SequenceEqual(expected))
                throw new ArgumentException($"must have shape ({string.Join(", ", expected)}); got ({string.Join(", ", logSumExp.Lengths.ToArray())}).", nameof(logSumExp));
            ShapeValidator.LastDimContiguous(Describe(logSumExp, nameof(logSumExp)));
        }
        CudaKvCache.Run(shape, options, cacheOptions, new KvCacheTensors<T>(q, kCache, vCache, kNew, vNew, cacheSeqlens, cacheBatchIndex,
            blockTable, rotaryCos, rotarySin, output, logSumExp), stream);
    }

    private static KvCacheShape ValidateKvCache<T>(CudaTensor<T> q, CudaTensor<T> kCache, CudaTensor<T> vCache, CudaTensor<T>? kNew,
        CudaTensor<T>? vNew, CudaTensor<int>? cacheSeqlens, CudaTensor<int>? cacheBatchIndex, CudaTensor<int>? blockTable,
        CudaTensor<T>? rotaryCos, CudaTensor<T>? rotarySin, AttentionOptions options, KvCacheOptions cacheOptions) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(kCache);
        ArgumentNullException.ThrowIfNull(vCache);
        if (typeof(T) != typeof(Half) && typeof(T) != typeof(BFloat16))
            throw new ArgumentException($"element type {typeof(T).Name} is not supported by the CUDA kernels; use System.Half or FlashAttn.BFloat16 (float runs on the CPU path).", nameof(q));
        TensorArg? Optional<TE>(CudaTensor<TE>? t, string name) where TE : unmanaged => t is null ? null : Describe(t, name);
        return KvCacheValidator.Validate(Describe(q, nameof(q)), Describe(kCache, nameof(kCache)), Describe(vCache, nameof(vCache)),
            Optional(kNew, nameof(kNew)), Optional(vNew, nameof(vNew)), Optional(cacheSeqlens, nameof(cacheSeqlens)),
            Optional(cacheBatchIndex, nameof(cacheBatchIndex)), Optional(blockTable, nameof(blockTable)), Optional(rotaryCos, nameof(rotaryCos)),
            Optional(rotarySin, nameof(rotarySin)), options, cacheOptions, typeof(T));
    }
}
