// Split-KV attention over a KV cache (flash-decoding; flash_attn_with_kvcache's attention). Decoding reads the whole
// cache for a handful of query rows, so the kernel is built for memory bandwidth, not tensor-core throughput:
//   - grid (split, kv head x row tile, batch): the query heads that share a KV head are packed into the rows of one
//     16-row tile (row r = query (r / group), head (kv_head * group + r % group)), so each cache row is read once per tile;
//   - each split walks an equal share of its sequence's key blocks (from the device-side length, so short sequences
//     spread over every split too), BN keys at a time through a STAGES-deep cp.async pipeline;
//   - inside a block the four warps take 16 keys each with their own online softmax, and are merged at the end;
//   - with one split the result goes straight to O and the LSE; otherwise to fp32 partials that decode_combine.cu merges.
// Variant: FA_HEAD_DIM (64, 128, 256), FA_STAGES, FA_BF16, FA_SOFTCAP, FA_ALIBI.
#include "fa_kvcache.cuh"
#include "fa_tile.cuh"
#include "fa_score_mods.cuh"
#include "fa_elements.cuh"

struct FlashDecodeParams {
    const void* q; const void* k_cache; const void* v_cache;
    void* o;
    float* lse;                  // (batch, heads_q, seqlen_q) or null
    float* o_partial;            // (splits, batch, heads_q, seqlen_q, head_dim) fp32, used when num_splits > 1
    float* lse_partial;          // (splits, batch, heads_q, seqlen_q)
    const float* alibi_slopes;
    long long q_batch_stride, q_row_stride, q_head_stride;
    long long k_batch_stride, k_row_stride, k_head_stride;   // batch stride: per cache sequence, or per page
    long long v_batch_stride, v_row_stride, v_head_stride;
    long long o_batch_stride, o_row_stride, o_head_stride;
    long long lse_batch_stride, lse_head_stride;
    long long alibi_batch_stride;
    CacheLayout cache;
    int batch, heads_q, heads_kv, head_dim, seqlen_q;
    int window_left, window_right;
    int num_splits;
    float scale_log2, scale, softcap_pre, alibi_factor;
};

#ifndef FA_STAGES
#define FA_STAGES 3
#endif
#if FA_BF16
typedef BfloatElem Elem;
#else
typedef HalfElem Elem;
#endif

constexpr int kDecodeWarps = 4, kDecodeThreads = 128, kDecodeRows = 16, kDecodeBlockN = 64;

// Streams keys [col0, col0 + BN) of one head into a swizzled tile; keys at or past seqlen_k and dims past head_dim are
// zero-filled, so masked scores meet zeros in V, never stale shared memory.
template <int D>
__device__ __forceinline__ void load_cache_block(u32 tile, const u16* cache, const CacheLayout& c, int b, long long batch_stride,
                                                 long long row_stride, long long head_offset, int col0, int seqlen_k, int head_dim, int tid) {
    constexpr int kChunks = D / 8, kRowsPerPass = kDecodeThreads / kChunks;
    const int chunk = tid % kChunks;
    const bool chunk_inside = chunk * 8 < head_dim;
    // The block's rows form one strided run (one index lookup per block) unless a page boundary falls inside it.
    const bool one_run = c.block_table == nullptr || c.page_size % kDecodeBlockN == 0;
    const long long run = one_run ? cache_row_offset(c, b, col0, batch_stride, row_stride) : 0;
#pragma unroll
    for (int i = 0; i < kDecodeBlockN / kRowsPerPass; ++i) {
        const int r = tid / kChunks + i * kRowsPerPass, j = col0 + r;
        const bool inside = j < seqlen_k && chunk_inside;
        // Rows past the sequence are never looked up: their page index would read past the block table's row.
        const long long row = !inside ? 0 : one_run ? run + r * row_stride : cache_row_offset(c, b, j, batch_stride, row_stride);
        const u16* src = inside ? cache + row + head_offset + chunk * 8 : cache;
        cp_async_16_l2_256(tile + swizzle<D>(r, chunk), src, inside ? 16 : 0);
    }
}

template <int D, int STAGES>
__device__ __forceinline__ void flash_decode_block(const FlashDecodeParams& p) {
    constexpr int BN = kDecodeBlockN, kRowBytes = D * 2, kOTiles = D / 8, kKSteps = D / 16;
    extern __shared__ __align__(128) unsigned char smem[];
    const u32 sQ = smem_addr(smem);
    const u32 sStages = sQ + kDecodeRows * kRowBytes;
    constexpr u32 kStageBytes = 2 * BN * kRowBytes;   // K then V

    const int split = blockIdx.x, b = blockIdx.z;
    const int kv_head = blockIdx.y % p.heads_kv, row_tile = blockIdx.y / p.heads_kv;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int group = p.heads_q / p.heads_kv, rows = p.seqlen_q * group, row0 = row_tile * kDecodeRows;

    const int seqlen_k = cached_keys(p.cache, b);
    const int offset = seqlen_k - p.seqlen_q;
    // Keys that some row of the tile may see, then this split's equal share of their blocks.
    const int first_query = row0 / group, last_query = (min(row0 + kDecodeRows, rows) - 1) / group;
    int key_begin = 0, key_end = seqlen_k;
    if (p.window_right >= 0) key_end = max(0, min(seqlen_k, last_query + offset + p.window_right + 1));
    if (p.window_left >= 0) key_begin = min(key_end, max(0, first_query + offset - p.window_left));
    const int block_first = key_begin / BN, blocks = (key_end + BN - 1) / BN - block_first;
    const int per_split = (max(blocks, 0) + p.num_splits - 1) / p.num_splits;
    const int n_begin = block_first + split * per_split;
    const int n_end = min(block_first + max(blocks, 0), n_begin + per_split);

    // The tile's query rows: Q into shared memory (zero rows past the end), plus per-row query index and ALiBi slope.
    {
        constexpr int kChunks = D / 8;
        for (int idx = tid; idx < kDecodeRows * kChunks; idx += kDecodeThreads) {
            const int r = idx / kChunks, chunk = idx % kChunks, gr = row0 + r;
            const bool inside = gr < rows && chunk * 8 < p.head_dim;
            const u16* src = (const u16*)p.q;
            if (inside)
                src += b * p.q_batch_stride + (gr / group) * p.q_row_stride + (kv_head * group + gr % group) * p.q_head_stride + chunk * 8;
            cp_async_16(sQ + swizzle<D>(r, chunk), src, inside ? 16 : 0);
        }
        cp_async_commit();
    }
    int query[2];
    float raw_slope[2];
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int gr = min(row0 + g + 8 * half, rows - 1);
        query[half] = gr / group;
        raw_slope[half] = alibi_raw_slope(p.alibi_slopes, p.alibi_batch_stride, p.alibi_factor, b, kv_head * group + gr % group);
    }

    const u16* k_base = (const u16*)p.k_cache;
    const u16* v_base = (const u16*)p.v_cache;
    const long long k_head = kv_head * p.k_head_stride, v_head = kv_head * p.v_head_stride;
    // Prologue: the first STAGES - 1 blocks in flight (one commit group each, empty past the end, so counts line up).
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
        const int n = n_begin + s;
        if (n < n_end) {
            load_cache_block<D>(sStages + s * kStageBytes, k_base, p.cache, b, p.k_batch_stride, p.k_row_stride, k_head, n * BN, seqlen_k, p.head_dim, tid);
            load_cache_block<D>(sStages + s * kStageBytes + BN * kRowBytes, v_base, p.cache, b, p.v_batch_stride, p.v_row_stride, v_head, n * BN,
                                seqlen_k, p.head_dim, tid);
        }
        cp_async_commit();
    }

    float acc_o[kOTiles][4];
#pragma unroll
    for (int nt = 0; nt < kOTiles; ++nt) acc_o[nt][0] = acc_o[nt][1] = acc_o[nt][2] = acc_o[nt][3] = 0.f;
    float row_max[2] = {-FA_INF, -FA_INF}, row_sum[2] = {0.f, 0.f};

    for (int n = n_begin; n < n_end; ++n) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();   // block n (and Q) landed; every warp is done with the stage refilled below
        {
            const int next = n + STAGES - 1;
            const u32 stage = sStages + ((next - n_begin) % STAGES) * kStageBytes;
            if (next < n_end) {
                load_cache_block<D>(stage, k_base, p.cache, b, p.k_batch_stride, p.k_row_stride, k_head, next * BN, seqlen_k, p.head_dim, tid);
                load_cache_block<D>(stage + BN * kRowBytes, v_base, p.cache, b, p.v_batch_stride, p.v_row_stride, v_head, next * BN, seqlen_k,
                                    p.head_dim, tid);
            }
            cp_async_commit();
        }
        const u32 sK = sStages + ((n - n_begin) % STAGES) * kStageBytes, sV = sK + BN * kRowBytes;
        const int key0 = warp * 16;   // this warp's 16 keys of the block

        float acc_s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
        for (int kk = 0; kk < kKSteps; ++kk) {
            // Q's fragments are re-read from shared memory per block: holding them would cost D / 4 registers per thread,
            // for 16 rows that shared memory serves at no cost to a kernel waiting on the cache.
            u32 qa[4], kb[4];
            ldmatrix_x4(qa, sQ + swizzle<D>(lane % 16, 2 * kk + lane / 16));
            ldmatrix_x4(kb, sK + swizzle<D>(key0 + (lane / 16) * 8 + lane % 8, 2 * kk + (lane / 8) % 2));
            Elem::mma(acc_s[0], qa, kb);
            Elem::mma(acc_s[1], qa, kb + 2);
        }

        // Modifiers and masks on every score: decoding is bound by the cache reads, not by these few instructions.
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int half = e / 2, col = n * BN + key0 + nt * 8 + 2 * t + (e & 1);
                const int diagonal = query[half] + offset;
                float dtanh;
                float s = modify_score(acc_s[nt][e], p.softcap_pre, raw_slope[half], (float)(diagonal - col), dtanh);
                const bool hidden = col >= seqlen_k || (p.window_right >= 0 && col > diagonal + p.window_right)
                    || (p.window_left >= 0 && col < diagonal - p.window_left);
                acc_s[nt][e] = hidden ? -FA_INF : s;
            }

#pragma unroll
        for (int half = 0; half < 2; ++half) {
            float m = fmaxf(fmaxf(acc_s[0][2 * half], acc_s[0][2 * half + 1]), fmaxf(acc_s[1][2 * half], acc_s[1][2 * half + 1]));
            m = fmaxf(row_max[half], quad_max(m));
            const float base = m == -FA_INF ? 0.f : m * p.scale_log2;
            const float rescale = fast_exp2(row_max[half] * p.scale_log2 - base);
            row_max[half] = m;
            float sum = 0.f;
#pragma unroll
            for (int nt = 0; nt < 2; ++nt)
#pragma unroll
                for (int e = 2 * half; e < 2 * half + 2; ++e) {
                    acc_s[nt][e] = fast_exp2(fmaf(acc_s[nt][e], p.scale_log2, -base));
                    sum += acc_s[nt][e];
                }
            row_sum[half] = row_sum[half] * rescale + sum;
#pragma unroll
            for (int nt = 0; nt < kOTiles; ++nt) {
                acc_o[nt][2 * half] *= rescale;
                acc_o[nt][2 * half + 1] *= rescale;
            }
        }

        u32 pa[4];
        pa[0] = Elem::pack(acc_s[0][0], acc_s[0][1]);
        pa[1] = Elem::pack(acc_s[0][2], acc_s[0][3]);
        pa[2] = Elem::pack(acc_s[1][0], acc_s[1][1]);
        pa[3] = Elem::pack(acc_s[1][2], acc_s[1][3]);
#pragma unroll
        for (int dp = 0; dp < kOTiles / 2; ++dp) {
            u32 vb[4];
            ldmatrix_x4_trans(vb, sV + swizzle<D>(key0 + ((lane / 8) % 2) * 8 + lane % 8, 2 * dp + lane / 16));
            Elem::mma(acc_o[2 * dp], pa, vb);
            Elem::mma(acc_o[2 * dp + 1], pa, vb + 2);
        }
    }
    cp_async_wait<0>();
    __syncthreads();   // the stages are free: reuse them to merge the warps

    // Merge the four warps' (max, sum, O): per row, M = max of the maxima, each warp's part scaled by exp2((m_w - M) s).
    float* s_max = (float*)(smem + kDecodeRows * kRowBytes);            // [warps][rows]
    float* s_sum = s_max + kDecodeWarps * kDecodeRows;                   // [warps][rows]
    float* s_out = s_sum + kDecodeWarps * kDecodeRows;                   // [warps][rows][D]
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const float sum = quad_sum(row_sum[half]);
        if (t == 0) {
            s_max[warp * kDecodeRows + g + 8 * half] = row_max[half];
            s_sum[warp * kDecodeRows + g + 8 * half] = sum;
        }
    }
    __syncthreads();
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int r = g + 8 * half;
        float m = -FA_INF;
#pragma unroll
        for (int w = 0; w < kDecodeWarps; ++w) m = fmaxf(m, s_max[w * kDecodeRows + r]);
        const float factor = m == -FA_INF ? 0.f : fast_exp2((row_max[half] - m) * p.scale_log2);
        float* out_row = s_out + (warp * kDecodeRows + r) * D;
#pragma unroll
        for (int nt = 0; nt < kOTiles; ++nt) {
            out_row[nt * 8 + 2 * t] = acc_o[nt][2 * half] * factor;
            out_row[nt * 8 + 2 * t + 1] = acc_o[nt][2 * half + 1] * factor;
        }
    }
    __syncthreads();

    const bool partial = p.num_splits > 1;
    for (int idx = tid; idx < kDecodeRows * D; idx += kDecodeThreads) {
        const int r = idx / D, d = idx % D, gr = row0 + r;
        if (gr >= rows || d >= p.head_dim) continue;
        float m = -FA_INF;
#pragma unroll
        for (int w = 0; w < kDecodeWarps; ++w) m = fmaxf(m, s_max[w * kDecodeRows + r]);
        // A warp that saw no key adds 0; one that read a NaN score adds its NaN sum and O, so the row ends NaN (with
        // LSE = +inf), as flash_fwd and the CPU path give it (TEST-MATRIX rule 2) instead of looking empty.
        float total = 0.f, o = 0.f;
#pragma unroll
        for (int w = 0; w < kDecodeWarps; ++w) {
            const float wm = s_max[w * kDecodeRows + r];
            const float factor = (m == -FA_INF || wm == -FA_INF) ? 0.f : fast_exp2((wm - m) * p.scale_log2);
            total += s_sum[w * kDecodeRows + r] * factor;
            o += s_out[(w * kDecodeRows + r) * D + d];
        }
        const bool empty = !(total > 0.f);
        const float value = o * (empty ? 0.f : 1.f / total);   // 0 for an empty row, NaN stays NaN
        const int qi = gr / group, head = kv_head * group + gr % group;
        const long long row_index = (((long long)split * p.batch + b) * p.heads_q + head) * p.seqlen_q + qi;
        if (partial) {
            p.o_partial[row_index * p.head_dim + d] = value;
            // NaN marks a split that read a NaN score, so the combine makes the row NaN instead of dropping the split.
            if (d == 0) p.lse_partial[row_index] = total != total ? total : empty ? -FA_INF : m * p.scale + __logf(total);
        } else {
            ((u16*)p.o)[b * p.o_batch_stride + qi * p.o_row_stride + head * p.o_head_stride + d] = Elem::from_float(value);
            if (d == 0 && p.lse != nullptr)
                p.lse[b * p.lse_batch_stride + head * p.lse_head_stride + qi] = empty ? FA_INF : m * p.scale + __logf(total);
        }
    }
}

extern "C" __global__ void __launch_bounds__(kDecodeThreads) flash_decode_kernel(const FlashDecodeParams p) {
    flash_decode_block<FA_HEAD_DIM, FA_STAGES>(p);
}
