using TorchSharp;

namespace FlashAttn.TorchSharp;

public static partial class FlashAttentionTorch
{
    /// <summary>
    /// Attention of q over a KV cache (flash-attn's <c>flash_attn_with_kvcache</c>), for incremental decoding: when k and v
    /// are given they are appended to the caches in place at each sequence's cache length (rotated first when rotary tables
    /// are given, as is q), then q attends over cache rows 0 .. cache_seqlens[b] + seqlen_new - 1, with causal and window
    /// masks aligned to the bottom-right corner.
    /// </summary>
    /// <param name="q">(batch, seqlen_q, heads_q, headdim) (<c>q</c>); headdim 1..256 on the CPU, a multiple of 8 up to 256
    /// on CUDA. Copied first only when its last dimension is not contiguous.</param>
    /// <param name="kCache">(batch_cache, seqlen_cache, heads_kv, headdim), or with <paramref name="blockTable"/> a paged cache
    /// (num_blocks, page_size, heads_kv, headdim) (<c>k_cache</c>); heads_kv divides heads_q (MQA/GQA). Read and written in
    /// place through its strides, never copied: its last dimension must have stride 1.</param>
    /// <param name="vCache">Shaped like kCache (<c>v_cache</c>); read and written in place likewise.</param>
    /// <param name="k">Keys to append, (batch, seqlen_new, heads_kv, headdim) (<c>k</c>); null for none. Needs
    /// <paramref name="cacheSeqlens"/>.</param>
    /// <param name="v">Values to append, shaped like k (<c>v</c>); given together with k.</param>
    /// <param name="rotaryCos">(seqlen_ro, rotary_dim / 2) cosines (<c>rotary_cos</c>), seqlen_ro covering the cache capacity;
    /// only with k and v. New keys are rotated at their cache position; q at cache_seqlens + i when causal or windowed, at
    /// cache_seqlens otherwise. The layout of the pairs is <see cref="KvCacheOptions.RotaryInterleaved"/>.</param>
    /// <param name="rotarySin">Sines, shaped like rotaryCos (<c>rotary_sin</c>).</param>
    /// <param name="cacheSeqlens">int32 (batch) keys already in each sequence's cache (<c>cache_seqlens</c>); null means the
    /// whole cache. Required with k and v.</param>
    /// <param name="cacheBatchIndex">int32 (batch) cache row of each sequence (<c>cache_batch_idx</c>); null means row b. Not
    /// with a paged cache.</param>
    /// <param name="blockTable">int32 (batch, max_blocks) page indices (<c>block_table</c>): key position j of sequence b is
    /// row j % page_size of page blockTable[b, j / page_size]; null for a contiguous cache.</param>
    /// <param name="options">flash-attn's <c>causal</c>, <c>softmax_scale</c>, <c>window_size</c>, <c>softcap</c> and
    /// <c>alibi_slopes</c>; null for the defaults. Dropout and probabilities are refused (inference only).</param>
    /// <param name="cacheOptions"><c>rotary_interleaved</c> and <c>num_splits</c> (CUDA; ignored on the CPU); null for the
    /// defaults.</param>
    /// <returns>The output, (batch, seqlen_q, heads_q, headdim), on q's device in q's dtype; it does not require grad.</returns>
    /// <remarks>
    /// <para><b>Inference only.</b> No autograd node is recorded: the result does not require grad, gradients do not flow to
    /// q, k, v or the caches, and the work runs as under <c>torch.no_grad()</c> whatever the inputs require. The append writes
    /// the caches through their data pointers, so torch's version counter of the caches is not bumped; a cache that requires
    /// grad is refused when appending.</para>
    /// <para><b>Devices and dtypes.</b> Every tensor is on q's device. The caches, k, v and the rotary tables have q's dtype:
    /// float32, float16 or bfloat16 on the CPU, float16 or bfloat16 on CUDA (float32 on CUDA is refused with
    /// <see cref="NotSupportedException"/>). cacheSeqlens, cacheBatchIndex and blockTable are int32, as in flash-attn.</para>
    /// <para><b>Index values.</b> On CPU tensors the index tensors are read to the host once and checked (each length in
    /// [0, capacity - seqlen_new], each batch index a cache row, each page a sequence uses a page of the cache) before anything
    /// is written. On CUDA tensors they stay in device memory and are never read back (no synchronisation, as in flash-attn):
    /// the kernels clamp them to the cache, so wrong values give wrong results, not faults.</para>
    /// <para><b>Streams.</b> As for the other entry points: the CUDA kernels run on the legacy default stream, libtorch's, so
    /// torch work queued before (e.g. updating cacheSeqlens on the device) and after is ordered with them without
    /// synchronisation. flash-attn's <c>cache_leftpad</c> is not available.</para>
    /// </remarks>
    /// <exception cref="ArgumentException">Mismatched shapes, dtypes or devices; index tensors that are not int32 or not one
    /// entry per sequence; a cache whose layout cannot be written in place, or that requires grad when appending; (CPU) index
    /// values outside the cache; dropout or probabilities in the options. The caches are unchanged when this is thrown.</exception>
    /// <exception cref="NotSupportedException">float32 on CUDA, or a device other than CPU and CUDA.</exception>
    public static torch.Tensor AttentionWithKvCache(torch.Tensor q, torch.Tensor kCache, torch.Tensor vCache, torch.Tensor? k = null,
        torch.Tensor? v = null, torch.Tensor? rotaryCos = null, torch.Tensor? rotarySin = null, torch.Tensor? cacheSeqlens = null,
        torch.Tensor? cacheBatchIndex = null, torch.Tensor? blockTable = null, AttentionOptions? options = null, KvCacheOptions? cacheOptions = null)
    {
        var call = KvCacheCall.Create(q, kCache, vCache, k, v, rotaryCos, rotarySin, cacheSeqlens, cacheBatchIndex, blockTable, options, cacheOptions);
        return KvCacheKernels.Forward(call, withLse: false).Output;
    }

    /// <summary>
    /// <see cref="AttentionWithKvCache"/> that also returns the log-sum-exp (flash-attn's <c>flash_attn_with_kvcache</c> with
    /// <c>return_softmax_lse=True</c>).
    /// </summary>
    /// <param name="q">(batch, seqlen_q, heads_q, headdim) (<c>q</c>).</param>
    /// <param name="kCache">The key cache, contiguous or paged (<c>k_cache</c>), written in place when k is given.</param>
    /// <param name="vCache">The value cache (<c>v_cache</c>), written in place when v is given.</param>
    /// <param name="k">Keys to append (<c>k</c>); null for none.</param>
    /// <param name="v">Values to append (<c>v</c>).</param>
    /// <param name="rotaryCos">(seqlen_ro, rotary_dim / 2) cosines (<c>rotary_cos</c>).</param>
    /// <param name="rotarySin">Sines (<c>rotary_sin</c>).</param>
    /// <param name="cacheSeqlens">int32 (batch) cache lengths (<c>cache_seqlens</c>); null for the whole cache.</param>
    /// <param name="cacheBatchIndex">int32 (batch) cache rows (<c>cache_batch_idx</c>); null for row b.</param>
    /// <param name="blockTable">int32 (batch, max_blocks) page indices (<c>block_table</c>); null for a contiguous cache.</param>
    /// <param name="options">Attention options; null for the defaults.</param>
    /// <param name="cacheOptions">Rotary layout and splits; null for the defaults.</param>
    /// <returns>The output (batch, seqlen_q, heads_q, headdim) and the fp32 log-sum-exp (batch, heads_q, seqlen_q) of the
    /// softmax (scaled scores), +inf for a row that sees no key; neither requires grad.</returns>
    /// <exception cref="ArgumentException">See <see cref="AttentionWithKvCache"/>.</exception>
    /// <exception cref="NotSupportedException">See <see cref="AttentionWithKvCache"/>.</exception>
    public static (torch.Tensor Output, torch.Tensor LogSumExp) AttentionWithKvCacheAndLse(torch.Tensor q, torch.Tensor kCache, torch.Tensor vCache,
        torch.Tensor? k = null, torch.Tensor? v = null, torch.Tensor? rotaryCos = null, torch.Tensor? rotarySin = null,
        torch.Tensor? cacheSeqlens = null, torch.Tensor? cacheBatchIndex = null, torch.Tensor? blockTable = null, AttentionOptions? options = null,
        KvCacheOptions? cacheOptions = null)
    {
        var call = KvCacheCall.Create(q, kCache, vCache, k, v, rotaryCos, rotarySin, cacheSeqlens, cacheBatchIndex, blockTable, options, cacheOptions);
        var (output, logSumExp) = KvCacheKernels.Forward(call, withLse: true);
        return (output, logSumExp!);
    }
}
