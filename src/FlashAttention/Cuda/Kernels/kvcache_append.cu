// KV-cache append with rotary embedding (flash_attn_with_kvcache's k / v / rotary_cos / rotary_sin): writes k_new and
// v_new into the cache at positions cache_seqlens[b] + i, rotating the first rotary_dim dims of k_new, and writes a
// rotated copy of q for the attention kernel. One thread per output element; each reads its rotation partner, so the
// (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos) pairs need no exchange. Values are rotated in fp32 and rounded once.
//
// Variant: FA_BF16.
#include "fa_kvcache.cuh"
#include "fa_elements.cuh"

#if FA_BF16
typedef BfloatElem Elem;
#else
typedef HalfElem Elem;
#endif

struct KvCacheAppendParams {
    const void* k_new; const void* v_new;
    void* k_cache; void* v_cache;
    const void* q; void* q_rotated;         // q_rotated: dense (batch, seqlen_q, heads_q, head_dim); null = no q rotation
    const void* rotary_cos; const void* rotary_sin;   // (seqlen_ro, rotary_dim / 2), null = no rotary
    long long knew_batch_stride, knew_row_stride, knew_head_stride;
    long long vnew_batch_stride, vnew_row_stride, vnew_head_stride;
    long long k_batch_stride, k_row_stride, k_head_stride;
    long long v_batch_stride, v_row_stride, v_head_stride;
    long long q_batch_stride, q_row_stride, q_head_stride;
    long long rotary_row_stride;
    CacheLayout cache;
    int batch, seqlen_q, heads_q, heads_kv, head_dim;
    int rotary_dim, seqlen_ro;
    int interleaved;          // pairs (2j, 2j + 1); else (j, j + rotary_dim / 2)
    int q_positions_advance;  // q row i at cache_seqlens[b] + i (causal / local), else every row at cache_seqlens[b]
};

// Element `d` of a row after rotary at `pos` (positions past the table reuse its last row).
__device__ __forceinline__ float rotated(const KvCacheAppendParams& p, const u16* row, int d, int pos) {
    const float x = Elem::to_float(row[d]);
    if (p.rotary_cos == nullptr || d >= p.rotary_dim) return x;
    const int half = p.rotary_dim / 2;
    int pair, partner;
    bool first;
    if (p.interleaved) { pair = d / 2; partner = d ^ 1; first = (d & 1) == 0; }
    else { first = d < half; pair = first ? d : d - half; partner = first ? d + half : d - half; }
    const long long at = (long long)min(max(pos, 0), p.seqlen_ro - 1) * p.rotary_row_stride + pair;
    const float c = Elem::to_float(((const u16*)p.rotary_cos)[at]), s = Elem::to_float(((const u16*)p.rotary_sin)[at]);
    const float y = Elem::to_float(row[partner]);
    return first ? x * c - y * s : y * s + x * c;
}

extern "C" __global__ void kvcache_append_kernel(const KvCacheAppendParams p) {
    const long long kv_items = (long long)p.batch * p.cache.seqlen_new * p.heads_kv * p.head_dim;
    const long long q_items = p.q_rotated != nullptr ? (long long)p.batch * p.seqlen_q * p.heads_q * p.head_dim : 0;
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < kv_items + q_items; idx += (long long)gridDim.x * blockDim.x) {
        if (idx < kv_items) {
            const int d = (int)(idx % p.head_dim);
            long long rest = idx / p.head_dim;
            const int h = (int)(rest % p.heads_kv);
            rest /= p.heads_kv;
            const int i = (int)(rest % p.cache.seqlen_new);
            const int b = (int)(rest / p.cache.seqlen_new);
            const int pos = (p.cache.cache_seqlens != nullptr ? max(p.cache.cache_seqlens[b], 0) : 0) + i;
            if (pos >= p.cache.capacity) continue;   // a bad length must not write past the sequence's cache
            const u16* k_row = (const u16*)p.k_new + b * p.knew_batch_stride + i * p.knew_row_stride + h * p.knew_head_stride;
            const u16* v_row = (const u16*)p.v_new + b * p.vnew_batch_stride + i * p.vnew_row_stride + h * p.vnew_head_stride;
            ((u16*)p.k_cache)[cache_row_offset(p.cache, b, pos, p.k_batch_stride, p.k_row_stride) + h * p.k_head_stride + d] =
                Elem::from_float(rotated(p, k_row, d, pos));
            ((u16*)p.v_cache)[cache_row_offset(p.cache, b, pos, p.v_batch_stride, p.v_row_stride) + h * p.v_head_stride + d] = v_row[d];
        } else {
            const long long q_idx = idx - kv_items;
            const int d = (int)(q_idx % p.head_dim);
            long long rest = q_idx / p.head_dim;
            const int h = (int)(rest % p.heads_q);
            rest /= p.heads_q;
            const int i = (int)(rest % p.seqlen_q);
            const int b = (int)(rest / p.seqlen_q);
            const int pos = (p.cache.cache_seqlens != nullptr ? max(p.cache.cache_seqlens[b], 0) : 0) + (p.q_positions_advance ? i : 0);
            const u16* q_row = (const u16*)p.q + b * p.q_batch_stride + i * p.q_row_stride + h * p.q_head_stride;
            ((u16*)p.q_rotated)[q_idx] = Elem::from_float(rotated(p, q_row, d, pos));
        }
    }
}
