// FlashAttention-2 backward (sm_80+) for head dims up to 128; the D pre-pass and dQ conversion are in fa_bwd_common.cuh:
//   flash_bwd_prepare: D = rowsum(dO * O) per query row (fp32) and zeroed dQ accumulators;
//   flash_bwd_kernel:  one CTA per (key block, kv head, batch) - or, deterministic, per (split, kv head, batch)
//                      looping over key blocks split, split + splits, ... Each warp owns 16 keys. For every query
//                      head of the GQA group and every query block that sees the key block it recomputes
//                      P^T = exp2(K Q^T * scale*log2(e) - LSE*log2(e)), then
//                        dV += P^T dO,  dP^T = V dO^T,  dS^T = P^T * (dP^T - D),  dK += dS^T Q
//                      with dK, dV in registers and P^T, dS^T reused as A operands straight from the accumulators;
//                      dS goes through shared memory for dQ += dS K, added to fp32 accumulators (atomics, or plain
//                      adds into the split's own buffer when deterministic). The softmax scale is applied once, to dK
//                      here and to dQ in the conversion;
//   flash_bwd_convert: dQ = scale * (sum of the splits' accumulators in order), converted to 16 bits.
// Variant (-D options): FA_HEAD_DIM (64, 128), FA_BLOCK_N (64 or 128 keys per CTA), FA_BLOCK_M (64 or 128 queries per step),
// FA_BF16, FA_DETERMINISTIC, FA_DROPOUT, FA_SOFTCAP, FA_ALIBI; varlen batches through cu_seqlens (fa_varlen.cuh).
constexpr int kD = FA_HEAD_DIM;
#include "fa_bwd_common.cuh"

#ifndef FA_BLOCK_N
#define FA_BLOCK_N 64
#endif
#ifndef FA_BLOCK_M
#define FA_BLOCK_M 64
#endif

constexpr int kBlockN = FA_BLOCK_N;    // keys per CTA (16 per warp): 64 or 128
constexpr int kBlockM = FA_BLOCK_M;    // queries per iteration: 64 or 128
constexpr int kWarps = kBlockN / 16;
constexpr int kThreads = kWarps * 32;
// dQ = dS K in 16-row groups: with more warps than row groups, warps split the head dim; with fewer, each warp
// takes several row groups in turn.
constexpr int kDqRowGroups = kBlockM / 16;
constexpr int kDqSplitD = kWarps > kDqRowGroups ? kWarps / kDqRowGroups : 1;
constexpr int kDqGroupsPerWarp = kDqRowGroups > kWarps ? kDqRowGroups / kWarps : 1;
constexpr int kDqCols = kD / kDqSplitD;
static_assert(kDqSplitD * kDqRowGroups == kWarps * kDqGroupsPerWarp && kDqCols % 16 == 0, "dQ warp layout");
static_assert(kThreads >= kBlockM, "one thread per query loads the block's LSE and D");

// ---------------------------------------------------------------------------------------------------------
// acc (16 x D) += P (16 x 8*KT, held as C fragments `frag`) * B where B is the (8*KT x D) tile sB read transposed:
// the "O += P V" shape, used for dV += P^T dO and dK += dS^T Q.
// kPositivePart: use max(frag, 0) (dropout stores dropped probabilities negated; dV takes the kept ones).
template <int KT, bool kPositivePart = false>
__device__ __forceinline__ void gemm_frag_b(float (&acc)[kD / 8][4], const float (&frag)[KT][4], u32 sB, const LaneOffsets& lo) {
    auto v = [](float x) { return kPositivePart ? fmaxf(x, 0.f) : x; };
#pragma unroll
    for (int kk = 0; kk < KT / 2; ++kk) {
        u32 a[4];
        a[0] = FaElement::pack(v(frag[2 * kk][0]), v(frag[2 * kk][1]));
        a[1] = FaElement::pack(v(frag[2 * kk][2]), v(frag[2 * kk][3]));
        a[2] = FaElement::pack(v(frag[2 * kk + 1][0]), v(frag[2 * kk + 1][1]));
        a[3] = FaElement::pack(v(frag[2 * kk + 1][2]), v(frag[2 * kk + 1][3]));
#pragma unroll
        for (int dp = 0; dp < kD / 16; ++dp) {
            u32 b[4];
            ldmatrix_x4_trans(b, sB + lo.bt[dp & 3] + kk * 16 * kRowBytes + (dp >> 2) * 128);
            FaElement::mma(acc[2 * dp], a, b);
            FaElement::mma(acc[2 * dp + 1], a, b + 2);
        }
    }
}

extern "C" __global__ void __launch_bounds__(kThreads) flash_bwd_kernel(const FlashBwdParams p) {
    // Shared memory: K, V (this CTA's key block), dS^T, then two stages of (Q, dO) tiles and their per-query LSE * log2(e)
    // and D, so the next query block streams in while the current one is computed.
    extern __shared__ __align__(128) unsigned char smem[];
    const u32 sK = smem_addr(smem), sV = sK + kBlockN * kRowBytes, sDS = sV + kBlockN * kRowBytes;
    const u32 sStage0 = sDS + kBlockN * kBlockM * 2;
    constexpr u32 kStageBytes = 2 * kBlockM * kRowBytes;
    float* sScalars = (float*)(smem + (sStage0 - sK) + 2 * kStageBytes);   // [stage][LSE2 | D][kBlockM]

    const int head_kv = blockIdx.y, batch = blockIdx.z;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const SequenceRange seq = sequence_range(p, batch);
    const int seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k, offset = seqlen_k - seqlen_q;
    const int group = p.heads_q / p.heads_kv;
    const int n_blocks = (seqlen_k + kBlockN - 1) / kBlockN;
    const LaneOffsets lo = lane_offsets<kD>(lane);
    // dQ: this warp's columns [dq_col0, + kDqCols), and the B-operand (K read transposed) offsets of its chunk pairs.
    const int dq_col0 = (warp / (kWarps / kDqSplitD)) * kDqCols;
    u32 dq_bt[4];
    lane_offsets_bt(dq_bt, lane, dq_col0 / 8);

    const u16* k_base = key_rows((const u16*)p.k, p.k_batch_stride, p.k_row_stride, p.k_head_stride, seq, batch, head_kv);
    const u16* v_base = key_rows((const u16*)p.v, p.v_batch_stride, p.v_row_stride, p.v_head_stride, seq, batch, head_kv);
    float* dq_accum = dq_accum_of_cta(p);

    for (int n_block = blockIdx.x; n_block < n_blocks; n_block += gridDim.x) {
        const int key0 = n_block * kBlockN;
        __syncthreads();  // the previous key block is done with every tile
        int m_first, m_last;
        begin_key_block<kBlockN, kBlockM, kThreads>(p, seq, sK, sV, k_base, v_base, key0, tid, m_first, m_last);

        float acc_dk[kD / 8][4], acc_dv[kD / 8][4];
#pragma unroll
        for (int i = 0; i < kD / 8; ++i)
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
            __syncthreads();  // stage it (and K, V) landed; every warp is done with stage it - 1 and with dS
            if (it + 1 < iterations)   // the next step's (head, block), as the loop's increment computes it
                load_query_stage<kBlockM, kThreads>(p, seq, sStage0 + ((it + 1) % 2) * kStageBytes, sScalars + ((it + 1) % 2) * 2 * kBlockM, batch,
                                                    m_block == m_last ? head + 1 : head, (m_block == m_last ? m_first : m_block + 1) * kBlockM, tid);
            {
                // S^T = K Q^T for this warp's 16 keys, then P^T = exp2(S^T * scale*log2e - LSE*log2e).
                float acc_s[kBlockM / 8][4];
#pragma unroll
                for (int i = 0; i < kBlockM / 8; ++i) acc_s[i][0] = acc_s[i][1] = acc_s[i][2] = acc_s[i][3] = 0.f;
                gemm_abt<kBlockM / 8>(acc_s, sK, warp * 16, sQ, lo);
                const bool need_mask = tile_needs_mask(p, seq, key0, kBlockN, q0, kBlockM);
                SoftcapGrad<kBlockM / 8> cap;
                probabilities_t(acc_s, cap, p, sLse2, key0 + warp * 16, q0, offset, seqlen_k, need_mask,
                                alibi_raw_slope(p.alibi_slopes, p.alibi_batch_stride, p.alibi_factor, batch, head), batch * p.heads_q + head, lane);

                // dP^T = V dO^T
                float acc_dp[kBlockM / 8][4];
#pragma unroll
                for (int i = 0; i < kBlockM / 8; ++i) acc_dp[i][0] = acc_dp[i][1] = acc_dp[i][2] = acc_dp[i][3] = 0.f;
                gemm_abt<kBlockM / 8>(acc_dp, sV, warp * 16, sDO, lo);

                // dV += P^T dO (with dropout: the kept P / (1 - p))
                gemm_frag_b<kBlockM / 8, FA_DROPOUT != 0>(acc_dv, acc_s, sDO, lo);

                // dS^T = P^T * (dP^T - D) (in place in acc_dp; the softmax scale enters dK and dQ once, at the end)
                ds_from_dp(acc_dp, acc_s, cap, sDelta, p, lane);

                // dK += dS^T Q
                gemm_frag_b<kBlockM / 8>(acc_dk, acc_dp, sQ, lo);

                // dS^T to shared memory ([key][query], swizzled rows of kBlockM) for dQ += dS K.
                store_frag_tile<kBlockM, kBlockM / 8>(sDS, warp * 16, 0, acc_dp, lane);
                __syncthreads();

                // dQ rows [q0 + 16 r, +16), columns [col0, col0 + kDqCols) += dS K, for this warp's row groups r:
                // A = dS read transposed from [key][query], B = K read transposed.
                float* dq_rows = dq_accum_rows(dq_accum, p, seq, batch, head);
#pragma unroll
                for (int rg = 0; rg < kDqGroupsPerWarp; ++rg) {
                    const int dq_group = (warp % (kWarps / kDqSplitD)) * kDqGroupsPerWarp + rg;
                    float acc_dq[kDqCols / 8][4];
#pragma unroll
                    for (int i = 0; i < kDqCols / 8; ++i) acc_dq[i][0] = acc_dq[i][1] = acc_dq[i][2] = acc_dq[i][3] = 0.f;
#pragma unroll
                    for (int kk = 0; kk < kBlockN / 16; ++kk) {
                        // A[query][key] read transposed out of dS^T[key][query].
                        u32 a[4];
                        ldmatrix_x4_trans(a, sDS + ds_lane_offset<kBlockM>(lane, dq_group) + kk * 16 * (kBlockM * 2));
#pragma unroll
                        for (int dp = 0; dp < kDqCols / 16; ++dp) {
                            u32 b[4];
                            ldmatrix_x4_trans(b, sK + dq_bt[dp & 3] + (dp >> 2) * 128 + kk * 16 * kRowBytes);
                            FaElement::mma(acc_dq[2 * dp], a, b);
                            FaElement::mma(acc_dq[2 * dp + 1], a, b + 2);
                        }
                    }
                    add_dq_tile<kDqCols / 8>(dq_rows, (long long)p.heads_q * p.head_dim, acc_dq, q0 + dq_group * 16, seqlen_q, dq_col0, p.head_dim, lane);
                }
            }
        }

        // dK, dV of this key block (rows past seqlen_k are not written).
        u16* dk = key_rows((u16*)p.dk, p.dk_batch_stride, p.dk_row_stride, p.dk_head_stride, seq, batch, head_kv);
        u16* dv = key_rows((u16*)p.dv, p.dv_batch_stride, p.dv_row_stride, p.dv_head_stride, seq, batch, head_kv);
        store_key_rows<kD / 8>(dk, p.dk_row_stride, acc_dk, p.scale, key0 + warp * 16, seqlen_k, 0, p.head_dim, lane);
        store_key_rows<kD / 8>(dv, p.dv_row_stride, acc_dv, 1.f, key0 + warp * 16, seqlen_k, 0, p.head_dim, lane);
    }
}

