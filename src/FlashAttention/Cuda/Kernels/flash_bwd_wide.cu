// FlashAttention-2 backward main kernel (sm_80+) for head dims 192 and 256, where one warp cannot hold 16 keys' dK and
// dV across the whole head dim in registers (flash_bwd.cu's layout). The D pre-pass and dQ conversion are the same
// (fa_bwd_common.cuh). One CTA of 8 warps per (64-key block, kv head, batch), or per deterministic split, looping over
// the query heads of its GQA group and the 64-query blocks that see the key block:
//   1. warp (key group kg = warp % 4, query half qh = warp / 4) computes its 16 x 32 tile of S^T = K Q^T, P^T, dP^T = V dO^T
//      and dS^T = P^T * (dP^T - D), and stores P^T and dS^T to shared memory (16 bits);
//   2. warp (key group kg, head-dim half dh = warp / 4) adds dV += P^T dO and dK += dS^T Q over the whole query block
//      for its 16 keys and kD / 2 columns, reading P^T and dS^T back as A operands (no GEMM is done twice);
//   3. warp (query row group warp % 4, head-dim half) adds dQ += dS K to the fp32 accumulators, 32 columns at a time.
// The softmax scale is applied once, to dK here and to dQ in the conversion.
// Variant (-D options): FA_HEAD_DIM (192, 256), FA_BF16, FA_DETERMINISTIC, FA_DROPOUT, FA_SOFTCAP, FA_ALIBI; varlen
// batches through cu_seqlens (fa_varlen.cuh).
constexpr int kD = FA_HEAD_DIM;
#include "fa_bwd_common.cuh"

constexpr int kBlockN = 64;            // keys per CTA
constexpr int kBlockM = 64;            // queries per iteration
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kHalfD = kD / 2;         // head-dim columns per warp in steps 2 and 3
constexpr int kDqPassCols = 32;        // dQ columns per pass (bounds the accumulator registers)
static_assert(kD % 64 == 0 && kHalfD % kDqPassCols == 0, "head-dim bucket");

// acc (16 x 8*NT) += A (16 x kBlockM: rows of the swizzled [row][query] tile sA, a_off from lane_offsets<kBlockM>.a plus
// the warp's row base) * B (kBlockM x 8*NT: the [query][d] tile sB read transposed at the columns bt[] address).
template <int NT>
__device__ __forceinline__ void gemm_smem_a(float (&acc)[NT][4], u32 sA, const u32 (&a_off)[4], u32 sB, const u32 (&bt)[4]) {
#pragma unroll
    for (int kk = 0; kk < kBlockM / 16; ++kk) {
        u32 a[4];
        ldmatrix_x4(a, sA + a_off[kk & 3] + (kk >> 2) * 128);
#pragma unroll
        for (int dp = 0; dp < NT / 2; ++dp) {
            u32 b[4];
            ldmatrix_x4_trans(b, sB + bt[dp & 3] + (dp >> 2) * 128 + kk * 16 * kRowBytes);
            FaElement::mma(acc[2 * dp], a, b);
            FaElement::mma(acc[2 * dp + 1], a, b + 2);
        }
    }
}

extern "C" __global__ void __launch_bounds__(kThreads, 1) flash_bwd_kernel(const FlashBwdParams p) {
    // Shared memory: K, V (this CTA's key block), P^T and dS^T ([key][query]), two stages of (Q, dO) and their per-query
    // LSE * log2(e) and D, so the next query block streams in while the current one is computed.
    extern __shared__ __align__(128) unsigned char smem[];
    const u32 sK = smem_addr(smem), sV = sK + kBlockN * kRowBytes, sPT = sV + kBlockN * kRowBytes, sDS = sPT + kBlockN * kBlockM * 2;
    const u32 sStage0 = sDS + kBlockN * kBlockM * 2;
    constexpr u32 kStageBytes = 2 * kBlockM * kRowBytes;
    float* sScalars = (float*)(smem + (sStage0 - sK) + 2 * kStageBytes);   // [stage][LSE2 | D][kBlockM]

    const int head_kv = blockIdx.y, batch = blockIdx.z;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int key_group = warp % 4, side = warp / 4;   // step 1: query half; steps 2 and 3: head-dim half
    const SequenceRange seq = sequence_range(p, batch);
    const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k, offset = seqlen_k - seqlen_q;
    const int group = p.heads_q / p.heads_kv;
    const int n_blocks = (seqlen_k + kBlockN - 1) / kBlockN;
    const LaneOffsets lo = lane_offsets<kD>(lane);
    const LaneOffsets lo_pt = lane_offsets<kBlockM>(lane);   // the P^T and dS^T tiles' rows are kBlockM queries
    u32 a_rows[4], bt_half[4];                                // step 2's A rows (this warp's keys) and B columns (its half)
#pragma unroll
    for (int j = 0; j < 4; ++j) a_rows[j] = lo_pt.a[j] + key_group * 16 * (kBlockM * 2);   // + rows: the swizzle keeps row % 8
    lane_offsets_bt(bt_half, lane, side * kHalfD / 8);

    const u16* k_base = key_rows((const u16*)p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, seq, batch, head_kv);
    const u16* v_base = key_rows((const u16*)p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, seq, batch, head_kv);
    float* dq_accum = dq_accum_of_cta(p);

    for (int n_block = blockIdx.x; n_block < n_blocks; n_block += gridDim.x) {
        const int key0 = n_block * kBlockN;
        __syncthreads();  // the previous key block is done with every tile
        int m_first, m_last;
        begin_key_block<kBlockN, kBlockM, kThreads>(p, seq, sK, sV, k_base, v_base, key0, tid, m_first, m_last);

        float acc_dk[kHalfD / 8][4], acc_dv[kHalfD / 8][4];
#pragma unroll
        for (int i = 0; i < kHalfD / 8; ++i)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc_dk[i][c] = acc_dv[i][c] = 0.f;

        // One flat loop over (query head of the group, query block), double-buffered: stage it % 2 holds block it.
        const int m_count = m_last - m_first + 1, iterations = m_count > 0 ? group * m_count : 0;
        // (head, m_block) of iteration it, advanced by counting (no integer division in the loop).
        int head = head_kv * group, m_block = m_first;
        if (iterations > 0) load_query_stage<kBlockM, kThreads>(p, seq, sStage0, sScalars, batch, head, m_block * kBlockM, tid);
        for (int it = 0; it < iterations; ++it, head += m_block == m_last, m_block = m_block == m_last ? m_first : m_block + 1) {
            const int q0 = m_block * kBlockM;
            const u32 sQ = sStage0 + (it % 2) * kStageBytes, sDO = sQ + kBlockM * kRowBytes;
            const float* sLse2 = sScalars + (it % 2) * 2 * kBlockM;
            const float* sDelta = sLse2 + kBlockM;
            cp_async_wait<0>();
            __syncthreads();  // stage it (and K, V) landed; every warp is done with stage it - 1, P^T and dS^T
            if (it + 1 < iterations)   // the next step's (head, block), as the loop's increment computes it
                load_query_stage<kBlockM, kThreads>(p, seq, sStage0 + ((it + 1) % 2) * kStageBytes, sScalars + ((it + 1) % 2) * 2 * kBlockM, batch,
                                                    m_block == m_last ? head + 1 : head, (m_block == m_last ? m_first : m_block + 1) * kBlockM, tid);
            {
                // Step 1: this warp's 16 keys x 32 queries of S^T, P^T, dP^T and dS^T.
                const int q_col = side * 32;
                float acc_s[4][4], acc_dp[4][4];
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int c = 0; c < 4; ++c) acc_s[i][c] = acc_dp[i][c] = 0.f;
                gemm_abt<4>(acc_s, sK, key_group * 16, sQ + q_col * kRowBytes, lo);
                const bool need_mask = tile_needs_mask(p, seq, key0, kBlockN, q0, kBlockM);
                SoftcapGrad<4> cap;
                probabilities_t(acc_s, cap, p, sLse2 + q_col, key0 + key_group * 16, q0 + q_col, offset, seqlen_k, need_mask,
                                alibi_raw_slope(p.alibi_slopes, p.alibi_batch_stride, p.alibi_factor, batch, head), batch * p.heads_q + head, lane);
                gemm_abt<4>(acc_dp, sV, key_group * 16, sDO + q_col * kRowBytes, lo);
                ds_from_dp(acc_dp, acc_s, cap, sDelta + q_col, p, lane);
                // P^T for dV (with dropout: the kept P / (1 - p), dropped ones 0) and dS^T, columns [q_col, q_col + 32).
                store_frag_tile<kBlockM, 4, FA_DROPOUT != 0>(sPT, key_group * 16, q_col / 8, acc_s, lane);
                store_frag_tile<kBlockM, 4>(sDS, key_group * 16, q_col / 8, acc_dp, lane);
            }
            __syncthreads();  // P^T and dS^T complete

            // Step 2: dV += P^T dO and dK += dS^T Q for this warp's 16 keys and head-dim half.
            gemm_smem_a<kHalfD / 8>(acc_dv, sPT, a_rows, sDO, bt_half);
            gemm_smem_a<kHalfD / 8>(acc_dk, sDS, a_rows, sQ, bt_half);

            // Step 3: dQ rows [q0 + 16 r, +16) (r = warp % 4) += dS K over this warp's head-dim half, kDqPassCols at a time:
            // A = dS read transposed out of dS^T[key][query], B = K read transposed.
            const int dq_group = key_group;
            const u32 ds_offset = ds_lane_offset<kBlockM>(lane, dq_group);
            float* dq_rows = dq_accum_rows(dq_accum, p, seq, batch, head);
#pragma unroll
            for (int pass = 0; pass < kHalfD / kDqPassCols; ++pass) {
                float acc_dq[kDqPassCols / 8][4];
#pragma unroll
                for (int i = 0; i < kDqPassCols / 8; ++i) acc_dq[i][0] = acc_dq[i][1] = acc_dq[i][2] = acc_dq[i][3] = 0.f;
#pragma unroll
                for (int kk = 0; kk < kBlockN / 16; ++kk) {
                    u32 a[4];
                    ldmatrix_x4_trans(a, sDS + ds_offset + kk * 16 * (kBlockM * 2));
#pragma unroll
                    for (int dp = 0; dp < kDqPassCols / 16; ++dp) {
                        // Chunk pair (pass * kDqPassCols / 16 + dp) of this half: bt_half[] repeats every 4 pairs.
                        const int pair = pass * (kDqPassCols / 16) + dp;
                        u32 b[4];
                        ldmatrix_x4_trans(b, sK + bt_half[pair & 3] + (pair >> 2) * 128 + kk * 16 * kRowBytes);
                        FaElement::mma(acc_dq[2 * dp], a, b);
                        FaElement::mma(acc_dq[2 * dp + 1], a, b + 2);
                    }
                }
                add_dq_tile<kDqPassCols / 8>(dq_rows, (long long)p.heads_q * p.head_dim, acc_dq, q0 + dq_group * 16, seqlen_q,
                                             side * kHalfD + pass * kDqPassCols, p.head_dim, lane);
            }
        }

        // dK, dV of this key block: this warp's 16 keys and head-dim half (rows past seqlen_k are not written).
        u16* dk = key_rows((u16*)p.dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, seq, batch, head_kv);
        u16* dv = key_rows((u16*)p.dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, seq, batch, head_kv);
        store_key_rows<kHalfD / 8>(dk, p.dk_row_stride, acc_dk, p.scale, key0 + key_group * 16, seqlen_k, side * kHalfD, p.head_dim, lane);
        store_key_rows<kHalfD / 8>(dv, p.dv_row_stride, acc_dv, 1.f, key0 + key_group * 16, seqlen_k, side * kHalfD, p.head_dim, lane);
    }
}
