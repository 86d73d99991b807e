// Parameters and cache addressing shared by the KV-cache kernels (kvcache_append.cu, flash_decode.cu). The C# structs
// KvCacheAppendParams and FlashDecodeParams mirror these layouts field for field (8-byte fields first).
//
// A sequence's key j lives in a contiguous cache at row j of cache sequence cache_batch_idx[b] (or b), or in a paged
// cache at row j % page_size of page block_table[b][j / page_size]. Every index that comes from device memory the host
// never read (lengths, batch indices, page numbers) is clamped, so bad values give wrong numbers, never a stray access.
#pragma once
#include "fa_ptx.cuh"

struct CacheLayout {
    const int* cache_seqlens;     // (batch) keys already cached, or null: the whole capacity
    const int* cache_batch_idx;   // (batch) cache sequence of each batch entry, or null
    const int* block_table;       // (batch, max_blocks) pages, or null for a contiguous cache
    long long block_table_batch_stride;
    int capacity;                 // keys one sequence can hold: seqlen_cache, or max_blocks * page_size
    int cache_batch;              // dimension 0 of the cache: batch_cache or num_blocks
    int page_size;                // paged: rows per page
    int seqlen_new;               // keys appended before attending (counted in the sequence's length)
};

// Keys sequence `b` attends over: cache_seqlens[b] + seqlen_new, clamped to the capacity.
__device__ __forceinline__ int cached_keys(const CacheLayout& c, int b) {
    if (c.cache_seqlens == nullptr) return c.capacity;
    return min(max(c.cache_seqlens[b], 0) + c.seqlen_new, c.capacity);
}

// Element offset of key `j` of sequence `b` in a cache with the given batch (or page) and row strides.
__device__ __forceinline__ long long cache_row_offset(const CacheLayout& c, int b, int j, long long batch_stride, long long row_stride) {
    if (c.block_table != nullptr) {
        const int page = min(max(c.block_table[b * c.block_table_batch_stride + j / c.page_size], 0), c.cache_batch - 1);
        return page * batch_stride + (long long)(j % c.page_size) * row_stride;
    }
    const int cb = c.cache_batch_idx != nullptr ? min(max(c.cache_batch_idx[b], 0), c.cache_batch - 1) : b;
    return cb * batch_stride + (long long)j * row_stride;
}
