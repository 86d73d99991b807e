// FlashAttention-2 backward for Hopper (sm_90a): flash_bwd.cu's algorithm, helpers (fa_bwd_common.cuh) and launch, with
// its five products on warpgroup MMAs. One CTA per (key block of 128, kv head, batch), or, deterministic, per (split, kv
// head, batch) walking key blocks split, split + splits, ... as there. Two warpgroups own 64 keys each; warp w owns keys
// 16w..16w+15 in mma.sync's fragment layout (the wgmma accumulator layout per warp), exactly as in flash_bwd.cu, so the
// probability, dS, dQ-accumulator and dK/dV store helpers are shared. For every query head of the GQA group and every
// query block of 64 rows that sees the key block (Q, dO, LSE and D double-buffered):
//   S^T = K Q^T and dP^T = V dO^T     SS, both K-major: m64 (the warpgroup's keys) x n64 (queries) x k = head dim
//   P^T, dS^T = P^T (dP^T - D)        in the accumulators (probabilities_t, ds_from_dp)
//   dV += P^T dO and dK += dS^T Q     RS: A = P^T / dS^T packed from the accumulators, B = dO / Q N-major
//   dS^T -> shared memory [key][query], then dQ += dS K
//                                     SS, both MN-major: m64 (queries) x n (half the head dim per warpgroup) x k = 128 keys,
//                                     added to the fp32 dQ accumulators as flash_bwd.cu does
// Tiles are fa_panels.cuh's 64-column panels (at head dim 64, and for the 64-query dS^T tile, the same bytes as
// fa_tile.cuh's layout). Shared memory written by cp.async or stmatrix is fenced to the async proxy before the barrier
// that hands it to wgmma.
// Not here (the launcher keeps flash_bwd.cu / flash_bwd_wide.cu): dropout, head dims above 128.
// Variant (-D options): FA_HEAD_DIM (64, 128), FA_BF16, FA_DETERMINISTIC, FA_SOFTCAP, FA_ALIBI.
constexpr int kD = FA_HEAD_DIM;
#include "fa_bwd_common.cuh"
#include "fa_wgmma.cuh"

constexpr int kBlockN = 128, kBlockM = 64, kThreads = 256;
constexpr int kDqCols = kD / 2;   // dQ columns per warpgroup
static_assert(kD == 64 || kD == 128, "head dims 64 and 128");
static_assert(!FA_DROPOUT, "dropout runs flash_bwd.cu");

#if FA_BF16
typedef WgmmaBf16 FaWgmma;
#else
typedef WgmmaF16 FaWgmma;
#endif

// The wgmma wrappers take flat accumulator arrays; the helpers keep mma.sync's [n-tile][4] shape of the same registers.
template <int NT>
__device__ __forceinline__ float (&flat(float (&acc)[NT][4]))[NT * 4] { return *reinterpret_cast<float (*)[NT * 4]>(&acc); }

template <int NT>
__device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
    for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}

// acc (this warpgroup's 64 keys x 64 queries) += A B^T over the head dim: A the keys' rows of a K-major key tile, B a
// K-major query tile. Issues the wgmmas; the caller commits and waits.
__device__ __forceinline__ void keys_by_queries(float (&acc)[kBlockM / 8][4], u64 desc_keys, u64 desc_queries) {
#pragma unroll
    for (int j = 0; j < kD / 16; ++j) FaWgmma::ss64(flat(acc), desc_keys + kmajor_step<kBlockN>(j), desc_queries + kmajor_step<kBlockM>(j));
}

// F (64 keys x 64 queries, C fragments) as the k16 A fragments of an RS wgmma (two adjacent n8 tiles per fragment).
__device__ __forceinline__ void pack_frag(u32 (&a)[kBlockM / 16][4], const float (&frag)[kBlockM / 8][4]) {
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
        a[kk][0] = FaElement::pack(frag[2 * kk][0], frag[2 * kk][1]);
        a[kk][1] = FaElement::pack(frag[2 * kk][2], frag[2 * kk][3]);
        a[kk][2] = FaElement::pack(frag[2 * kk + 1][0], frag[2 * kk + 1][1]);
        a[kk][3] = FaElement::pack(frag[2 * kk + 1][2], frag[2 * kk + 1][3]);
    }
}

// acc (64 keys x head dim) += F B: F packed by pack_frag, B an N-major (64 queries x head dim) panel tile. Issues the
// wgmmas; the caller fences before (after packing), commits and waits.
__device__ __forceinline__ void frag_by_panels(float (&acc)[kD / 8][4], const u32 (&a)[kBlockM / 16][4], u64 desc_b) {
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
#if FA_HEAD_DIM == 64
        FaWgmma::rs64(flat(acc), a[kk], desc_b + mnmajor_step(kk));
#else
        FaWgmma::rs128(flat(acc), a[kk], desc_b + mnmajor_step(kk));
#endif
    }
}

// acc (64 queries x this warpgroup's kDqCols columns) = dS K over the block's 128 keys: A = dS^T [key][query] and B = K
// [key][dim], both MN-major.
__device__ __forceinline__ void dq_product(float (&acc)[kDqCols / 8][4], u64 desc_ds, u64 desc_k) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk) {
#if FA_HEAD_DIM == 64
        FaWgmma::ss32tt(flat(acc), desc_ds + mnmajor_step(kk), desc_k + mnmajor_step(kk));
#else
        FaWgmma::ss64tt(flat(acc), desc_ds + mnmajor_step(kk), desc_k + mnmajor_step(kk));
#endif
    }
}

extern "C" __global__ void __launch_bounds__(kThreads, 1) flash_bwd_kernel(const FlashBwdParams p) {
    // Shared memory (1024-byte aligned; the launcher adds the slack): K, V, dS^T, then two stages of (Q, dO) panel tiles,
    // then per stage the block's LSE * log2(e) and D.
    extern __shared__ __align__(1024) unsigned char smem[];
    const u32 sK = (smem_addr(smem) + 1023u) & ~1023u;
    const u32 sV = sK + kBlockN * kRowBytes, sDS = sV + kBlockN * kRowBytes;
    const u32 sStage0 = sDS + kBlockN * kBlockM * 2;
    constexpr u32 kStageBytes = 2 * kBlockM * kRowBytes;
    float* sScalars = (float*)(smem + (sStage0 + 2 * kStageBytes - smem_addr(smem)));   // [stage][LSE2 | D][kBlockM]

    const int head_kv = blockIdx.y, batch = blockIdx.z;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, warpgroup = warp / 4;
    const SequenceRange seq = sequence_range(p, batch);
    const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k, offset = seqlen_k - seqlen_q;
    const int group = p.heads_q / p.heads_kv;
    const int n_blocks = (seqlen_k + kBlockN - 1) / kBlockN;

    // Descriptors that do not move with the stage: this warpgroup's key rows (K-major A), and its half of K's columns as
    // dQ's N-major B (at head dim 64 half a panel: 64 bytes into each swizzled row; at 128 its own panel).
    const u64 desc_k_rows = wgmma_desc_sw128(sK + warpgroup * 64 * kPanelRowBytes, 16, 1024);
    const u64 desc_v_rows = wgmma_desc_sw128(sV + warpgroup * 64 * kPanelRowBytes, 16, 1024);
    const u64 desc_k_cols = wgmma_desc_sw128(sK + (kD == 64 ? warpgroup * 64 : warpgroup * kBlockN * kPanelRowBytes), kBlockN * kPanelRowBytes, 1024);
    const u64 desc_ds = wgmma_desc_sw128(sDS, kBlockN * kPanelRowBytes, 1024);

    const u16* k_base = key_rows((const u16*)p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, seq, batch, head_kv);
    const u16* v_base = key_rows((const u16*)p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, seq, batch, head_kv);
    float* dq_accum = dq_accum_of_cta(p);

    for (int n_block = blockIdx.x; n_block < n_blocks; n_block += gridDim.x) {
        const int key0 = n_block * kBlockN;
        __syncthreads();  // the previous key block is done with every tile
        int m_first, m_last;
        begin_key_block<kBlockN, kBlockM, kThreads, true>(p, seq, sK, sV, k_base, v_base, key0, tid, m_first, m_last);

        float acc_dk[kD / 8][4], acc_dv[kD / 8][4];
        zero(acc_dk);
        zero(acc_dv);

        // One flat loop over (query head of the group, query block), double-buffered: stage it % 2 holds block it.
        const int m_count = m_last - m_first + 1, iterations = m_count > 0 ? group * m_count : 0;
        int head = head_kv * group, m_block = m_first;
        if (iterations > 0) load_query_stage<kBlockM, kThreads, true>(p, seq, sStage0, sScalars, batch, head, m_block * kBlockM, tid);
        for (int it = 0; it < iterations; ++it, head += m_block == m_last, m_block = m_block == m_last ? m_first : m_block + 1) {
            const int q0 = m_block * kBlockM;
            const u32 sQ = sStage0 + (it % 2) * kStageBytes, sDO = sQ + kBlockM * kRowBytes;
            const float* sLse2 = sScalars + (it % 2) * 2 * kBlockM;
            const float* sDelta = sLse2 + kBlockM;
            cp_async_wait<0>();
            fence_proxy_async();
            __syncthreads();  // stage it (and K, V) landed and visible to wgmma; every warp is done with stage it - 1 and dS
            if (it + 1 < iterations)
                load_query_stage<kBlockM, kThreads, true>(p, seq, sStage0 + ((it + 1) % 2) * kStageBytes, sScalars + ((it + 1) % 2) * 2 * kBlockM,
                                                          batch, m_block == m_last ? head + 1 : head, (m_block == m_last ? m_first : m_block + 1) * kBlockM, tid);

            // S^T = K Q^T and dP^T = V dO^T in one batch.
            float acc_s[kBlockM / 8][4], acc_dp[kBlockM / 8][4];
            zero(acc_s);
            zero(acc_dp);
            wgmma_fence();
            keys_by_queries(acc_s, desc_k_rows, wgmma_desc_sw128(sQ, 16, 1024));
            keys_by_queries(acc_dp, desc_v_rows, wgmma_desc_sw128(sDO, 16, 1024));
            wgmma_commit();
            wgmma_wait<0>();

            const bool need_mask = tile_needs_mask(p, seq, key0, kBlockN, q0, kBlockM);
            SoftcapGrad<kBlockM / 8> cap;
            probabilities_t(acc_s, cap, p, sLse2, key0 + warp * 16, q0, offset, seqlen_k, need_mask,
                            alibi_raw_slope(p.alibi_slopes, p.alibi_batch_stride, p.alibi_factor, batch, head), batch * p.heads_q + head, lane);
            ds_from_dp(acc_dp, acc_s, cap, sDelta, p, lane);   // dS^T in place in acc_dp (the scale enters dK and dQ at the end)

            // dV += P^T dO and dK += dS^T Q in one batch; dS^T goes to shared memory meanwhile.
            u32 pa[kBlockM / 16][4], dsa[kBlockM / 16][4];
            pack_frag(pa, acc_s);
            pack_frag(dsa, acc_dp);
            wgmma_fence();
            frag_by_panels(acc_dv, pa, wgmma_desc_sw128(sDO, kBlockM * kPanelRowBytes, 1024));
            frag_by_panels(acc_dk, dsa, wgmma_desc_sw128(sQ, kBlockM * kPanelRowBytes, 1024));
            wgmma_commit();
            store_frag_tile<kBlockM, kBlockM / 8>(sDS, warp * 16, 0, acc_dp, lane);
            fence_proxy_async();
            wgmma_wait<0>();
            __syncthreads();  // dS^T complete and visible to wgmma

            // dQ rows [q0, q0 + 64), this warpgroup's columns, += dS K.
            float acc_dq[kDqCols / 8][4];
            zero(acc_dq);
            wgmma_fence();
            dq_product(acc_dq, desc_ds, desc_k_cols);
            wgmma_commit();
            wgmma_wait<0>();
            add_dq_tile<kDqCols / 8>(dq_accum_rows(dq_accum, p, seq, batch, head), (long long)p.heads_q * p.head_dim, acc_dq,
                                     q0 + (warp % 4) * 16, seqlen_q, warpgroup * kDqCols, p.head_dim, lane);
        }

        // dK, dV of this key block (rows past seqlen_k are not written).
        u16* dk = key_rows((u16*)p.dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, seq, batch, head_kv);
        u16* dv = key_rows((u16*)p.dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, seq, batch, head_kv);
        store_key_rows<kD / 8>(dk, p.dk_row_stride, acc_dk, p.scale, key0 + warp * 16, seqlen_k, 0, p.head_dim, lane);
        store_key_rows<kD / 8>(dv, p.dv_row_stride, acc_dv, 1.f, key0 + warp * 16, seqlen_k, 0, p.head_dim, lane);
    }
}
