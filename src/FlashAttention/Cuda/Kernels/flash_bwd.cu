// FlashAttention-2 backward (sm_80+), three kernels:
//   flash_bwd_prepare: D = rowsum(dO * O) per query row (fp32) and zeroed dQ accumulators;
//   flash_bwd_kernel:  one CTA per (key block, kv head, batch) - or, deterministic, per (split, kv head, batch)
//                      looping over key blocks split, split + splits, ... Each warp owns 16 keys. For every query
//                      head of the GQA group and every query block that sees the key block it recomputes
//                      P^T = exp2(K Q^T * scale*log2(e) - LSE*log2(e)), then
//                        dV += P^T dO,  dP^T = V dO^T,  dS^T = P^T * (dP^T - D) * scale,  dK += dS^T Q
//                      with dK, dV in registers and P^T, dS^T reused as A operands straight from the accumulators;
//                      dS goes through shared memory for dQ += dS K, added to fp32 accumulators (atomics, or plain
//                      adds into the split's own buffer when deterministic);
//   flash_bwd_convert: dQ = sum of the splits' accumulators in order, converted to 16 bits.
// Variant (-D options): FA_HEAD_DIM (64, 128), FA_BLOCK_N (64 or 128 keys per CTA), FA_BF16, FA_DETERMINISTIC, FA_DROPOUT.
#include "fa_ptx.cuh"
#include "fa_bwd_params.cuh"
#include "fa_tile.cuh"
#include "fa_elements.cuh"

#if FA_BF16
typedef BfloatElem FaElement;
#else
typedef HalfElem FaElement;
#endif

#ifndef FA_BLOCK_N
#define FA_BLOCK_N 64
#endif
#ifndef FA_DROPOUT
#define FA_DROPOUT 0
#endif

constexpr int kD = FA_HEAD_DIM;
constexpr int kBlockN = FA_BLOCK_N;    // keys per CTA (16 per warp): 64 or 128
constexpr int kBlockM = 64;            // queries per iteration
constexpr int kWarps = kBlockN / 16;
constexpr int kThreads = kWarps * 32;
// dQ = dS K: 16 query rows per warp row group; with more warps than row groups, warps split the head dim.
constexpr int kDqRowGroups = kBlockM / 16;
constexpr int kDqSplitD = kWarps / kDqRowGroups;
constexpr int kDqCols = kD / kDqSplitD;
static_assert(kWarps % kDqRowGroups == 0 && kDqCols % 16 == 0, "dQ warp layout");
constexpr int kRowBytes = kD * 2;

// ---------------------------------------------------------------------------------------------------------
extern "C" __global__ void flash_bwd_prepare(const FlashBwdParams p) {
    // One warp per (batch, row, head): D = sum_c dO[c] * O[c].
    const long long rows = (long long)p.batch * p.seqlen_q * p.heads_q;
    const long long warp = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (warp < rows) {
        const int h = (int)(warp % p.heads_q);
        const int r = (int)((warp / p.heads_q) % p.seqlen_q);
        const int b = (int)(warp / ((long long)p.heads_q * p.seqlen_q));
        const u16* o = (const u16*)p.o + b * p.o_batch_stride + r * p.o_row_stride + h * p.o_head_stride;
        const u16* d = (const u16*)p.dout + b * p.do_batch_stride + r * p.do_row_stride + h * p.do_head_stride;
        float sum = 0.f;
        for (int c = lane; c < p.head_dim; c += 32) sum += FaElement::to_float(o[c]) * FaElement::to_float(d[c]);
#pragma unroll
        for (int m = 16; m > 0; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m);
        if (lane == 0) p.delta[b * p.lse_batch_stride + h * p.lse_head_stride + r] = sum;
    }
    // Zero the dQ accumulators (all splits) with a grid-stride loop.
    const long long total = p.dq_accum_split_stride * p.splits;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x)
        p.dq_accum[i] = 0.f;
}

// ---------------------------------------------------------------------------------------------------------
// Per-lane ldmatrix offsets, as in the forward kernel: the swizzle depends only on lane % 8 and k % 4.
struct LaneOffsets {
    u32 a[4];       // A operand rows (16 per warp tile), non-transposed: row = lane % 16, chunk + lane / 16
    u32 b[4];       // B operand (rows = n), non-transposed: row = (lane / 16) * 8 + lane % 8, chunk + (lane / 8) % 2
    u32 bt[4];      // B operand read transposed (rows = k): row = ((lane / 8) % 2) * 8 + lane % 8, chunk + lane / 16
};

template <int D>
__device__ __forceinline__ LaneOffsets lane_offsets(int lane) {
    constexpr int rb = D * 2;
    const int l8 = lane % 8;
    LaneOffsets o;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        o.a[j] = (lane % 16) * rb + ((((lane / 16) ^ l8) ^ (2 * j)) << 4);
        o.b[j] = ((lane / 16) * 8 + l8) * rb + (((((lane / 8) % 2) ^ l8) ^ (2 * j)) << 4);
        o.bt[j] = (((lane / 8) % 2) * 8 + l8) * rb + ((((lane / 16) ^ l8) ^ (2 * j)) << 4);
    }
    return o;
}

// acc (16 x N, N = 8 * NT) += A (16 x D rows of tile sA starting at a_row0) * B^T where B is the (N x D) tile sB:
// the "S = Q K^T" shape, used for S^T = K Q^T and dP^T = V dO^T.
template <int NT>
__device__ __forceinline__ void gemm_abt(float (&acc)[NT][4], u32 sA, int a_row0, u32 sB, const LaneOffsets& lo) {
#pragma unroll
    for (int chunk = 0; chunk < kD / 64; ++chunk)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            u32 a[4];
            ldmatrix_x4(a, sA + lo.a[j] + a_row0 * kRowBytes + chunk * 128);
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                u32 b[4];
                ldmatrix_x4(b, sB + lo.b[j] + np * 16 * kRowBytes + chunk * 128);
                FaElement::mma(acc[2 * np], a, b);
                FaElement::mma(acc[2 * np + 1], a, b + 2);
            }
        }
}

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
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int seqlen_q = p.seqlen_q, seqlen_k = p.seqlen_k, offset = seqlen_k - seqlen_q;
    const int group = p.heads_q / p.heads_kv;
    const int n_blocks = (seqlen_k + kBlockN - 1) / kBlockN;
    const LaneOffsets lo = lane_offsets<kD>(lane);
    const LaneOffsets lo64 = lane_offsets<kBlockM>(lane);
    constexpr float kLog2e = 1.4426950408889634f;

    const u16* k_base = (const u16*)p.k + batch * p.k_batch_stride + head_kv * p.k_head_stride;
    const u16* v_base = (const u16*)p.v + batch * p.v_batch_stride + head_kv * p.v_head_stride;
    float* dq_accum = p.dq_accum + (FA_DETERMINISTIC ? blockIdx.x * p.dq_accum_split_stride : 0);

    for (int n_block = blockIdx.x; n_block < n_blocks; n_block += gridDim.x) {
        const int key0 = n_block * kBlockN;
        __syncthreads();  // the previous key block is done with every tile
        load_tile<kD, kBlockN, kThreads>(sK, k_base, p.k_row_stride, key0, seqlen_k, p.head_dim, tid);
        load_tile<kD, kBlockN, kThreads>(sV, v_base, p.v_row_stride, key0, seqlen_k, p.head_dim, tid);
        cp_async_commit();

        // Queries that may see a key of this block (bottom-right aligned window).
        const int last_key = min(key0 + kBlockN, seqlen_k) - 1;
        int q_begin = 0, q_end = seqlen_q;
        if (p.window_right >= 0) q_begin = max(0, key0 - offset - p.window_right);
        if (p.window_left >= 0) q_end = min(seqlen_q, last_key - offset + p.window_left + 1);
        const int m_first = q_begin / kBlockM, m_last = q_end > q_begin ? (q_end - 1) / kBlockM : m_first - 1;

        float acc_dk[kD / 8][4], acc_dv[kD / 8][4];
#pragma unroll
        for (int i = 0; i < kD / 8; ++i)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc_dk[i][c] = acc_dv[i][c] = 0.f;

        // One flat loop over (query head of the group, query block), double-buffered: stage it % 2 holds block it.
        const int m_count = m_last - m_first + 1, iterations = m_count > 0 ? group * m_count : 0;
        auto load_stage = [&](int it) {
            const int head = head_kv * group + it / m_count, q0 = (m_first + it % m_count) * kBlockM;
            const u32 sQn = sStage0 + (it % 2) * kStageBytes, sDOn = sQn + kBlockM * kRowBytes;
            load_tile<kD, kBlockM, kThreads>(sQn, (const u16*)p.q + batch * p.q_batch_stride + head * p.q_head_stride, p.q_row_stride, q0, seqlen_q, p.head_dim, tid);
            load_tile<kD, kBlockM, kThreads>(sDOn, (const u16*)p.dout + batch * p.do_batch_stride + head * p.do_head_stride, p.do_row_stride, q0, seqlen_q, p.head_dim, tid);
            cp_async_commit();
            if (tid < kBlockM) {
                const int q = q0 + tid;
                const long long at = batch * p.lse_batch_stride + head * p.lse_head_stride + q;
                float* scalars = sScalars + (it % 2) * 2 * kBlockM;
                // Padded query rows: LSE = +inf makes their P exactly 0.
                scalars[tid] = q < seqlen_q ? p.lse[at] * kLog2e : FA_INF;
                scalars[kBlockM + tid] = q < seqlen_q ? p.delta[at] : 0.f;
            }
        };
        if (iterations > 0) load_stage(0);
        for (int it = 0; it < iterations; ++it) {
            const int head = head_kv * group + it / m_count, q0 = (m_first + it % m_count) * kBlockM;
            const u32 sQ = sStage0 + (it % 2) * kStageBytes, sDO = sQ + kBlockM * kRowBytes;
            const float* sLse2 = sScalars + (it % 2) * 2 * kBlockM;
            const float* sDelta = sLse2 + kBlockM;
            cp_async_wait<0>();
            __syncthreads();  // stage it (and K, V) landed; every warp is done with stage it - 1 and with dS
            if (it + 1 < iterations) load_stage(it + 1);
            {
                // S^T = K Q^T for this warp's 16 keys, then P^T = exp2(S^T * scale*log2e - LSE*log2e).
                float acc_s[kBlockM / 8][4];
#pragma unroll
                for (int i = 0; i < kBlockM / 8; ++i) acc_s[i][0] = acc_s[i][1] = acc_s[i][2] = acc_s[i][3] = 0.f;
                gemm_abt<kBlockM / 8>(acc_s, sK, warp * 16, sQ, lo);
                const bool need_mask = key0 + kBlockN > seqlen_k
                    || (p.window_right >= 0 && key0 + kBlockN - 1 > q0 + offset + p.window_right)
                    || (p.window_left >= 0 && key0 < q0 + kBlockM - 1 + offset - p.window_left);
#pragma unroll
                for (int nt = 0; nt < kBlockM / 8; ++nt) {
                    // This thread's two query columns of the n-tile: one 8-byte shared load for both LSEs.
                    const float2 lse2 = *(const float2*)(sLse2 + nt * 8 + 2 * t);
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        const int qi = nt * 8 + 2 * t + (i & 1);
                        float x = fmaf(acc_s[nt][i], p.scale_log2, -((i & 1) ? lse2.y : lse2.x));
                        if (need_mask) {
                            const int key = key0 + warp * 16 + g + (i >= 2 ? 8 : 0), diagonal = q0 + qi + offset;
                            const bool hidden = key >= seqlen_k || (p.window_right >= 0 && key > diagonal + p.window_right)
                                || (p.window_left >= 0 && key < diagonal - p.window_left);
                            if (hidden) x = -FA_INF;
                        }
                        acc_s[nt][i] = fast_exp2(x);
#if FA_DROPOUT
                        {
                            // Kept: P / (1 - p), the value the forward's PV used; dropped: -P (the sign carries the mask).
                            const int key = key0 + warp * 16 + g + (i >= 2 ? 8 : 0);
                            const PhiloxWords w = dropout_words(p.dropout, (unsigned int)(batch * p.heads_q + head), q0 + qi, key);
                            acc_s[nt][i] = word_of(w, key) >= p.dropout.keep_threshold ? acc_s[nt][i] * p.dropout.keep_scale : -acc_s[nt][i];
                        }
#endif
                    }
                }

                // dP^T = V dO^T
                float acc_dp[kBlockM / 8][4];
#pragma unroll
                for (int i = 0; i < kBlockM / 8; ++i) acc_dp[i][0] = acc_dp[i][1] = acc_dp[i][2] = acc_dp[i][3] = 0.f;
                gemm_abt<kBlockM / 8>(acc_dp, sV, warp * 16, sDO, lo);

                // dV += P^T dO (with dropout: the kept P / (1 - p))
                gemm_frag_b<kBlockM / 8, FA_DROPOUT != 0>(acc_dv, acc_s, sDO, lo);

                // dS^T = P^T * (dP^T - D) * scale (in place in acc_dp)
#pragma unroll
                for (int nt = 0; nt < kBlockM / 8; ++nt) {
                    const float2 d = *(const float2*)(sDelta + nt * 8 + 2 * t);
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        const float delta_q = (i & 1) ? d.y : d.x, x = acc_s[nt][i];
#if FA_DROPOUT
                        // dS = P * (Z * dP / (1 - p) - D): kept (x = P / (1 - p)): x * (dP - D (1 - p)); dropped (x = -P): x * D.
                        acc_dp[nt][i] = (x >= 0.f ? x * (acc_dp[nt][i] - delta_q / p.dropout.keep_scale) : x * delta_q) * p.scale;
#else
                        acc_dp[nt][i] = x * (acc_dp[nt][i] - delta_q) * p.scale;
#endif
                    }
                }

                // dK += dS^T Q
                gemm_frag_b<kBlockM / 8>(acc_dk, acc_dp, sQ, lo);

                // dS^T to shared memory ([key][query], swizzled rows of kBlockM) for dQ += dS K.
#pragma unroll
                for (int nt = 0; nt < kBlockM / 8; ++nt)
#pragma unroll
                    for (int half = 0; half < 2; ++half) {
                        const u32 packed = FaElement::pack(acc_dp[nt][2 * half], acc_dp[nt][2 * half + 1]);
                        asm volatile("st.shared.u32 [%0], %1;" :: "r"(sDS + swizzle<kBlockM>(warp * 16 + g + 8 * half, nt) + 4 * t), "r"(packed));
                    }
                __syncthreads();

                // dQ rows [q0 + 16 r, +16), columns [col0, col0 + kDqCols) += dS K, with r = warp % row groups:
                // A = dS read transposed from [key][query], B = K read transposed.
                const int dq_group = warp % kDqRowGroups, dq_col0 = (warp / kDqRowGroups) * kDqCols;
                float acc_dq[kDqCols / 8][4];
#pragma unroll
                for (int i = 0; i < kDqCols / 8; ++i) acc_dq[i][0] = acc_dq[i][1] = acc_dq[i][2] = acc_dq[i][3] = 0.f;
#pragma unroll
                for (int kk = 0; kk < kBlockN / 16; ++kk) {
                    // A[query][key] read transposed out of dS^T[key][query]: lane rows = keys kk*16 + (lane/16)*8 + lane%8,
                    // chunk = queries 2*group + (lane/8)%2 - the "b" offsets with j = group - which yields a0..a3 in order.
                    u32 a[4];
                    ldmatrix_x4_trans(a, sDS + lo64.b[dq_group] + kk * 16 * (kBlockM * 2));
#pragma unroll
                    for (int dp = 0; dp < kDqCols / 16; ++dp) {
                        const int chunk = dq_col0 / 8 + 2 * dp;  // 16-byte chunk of the K row; even, so chunk % 8 / 2 = (chunk / 2) & 3
                        u32 b[4];
                        ldmatrix_x4_trans(b, sK + lo.bt[(chunk / 2) & 3] + kk * 16 * kRowBytes + (chunk / 8) * 128);
                        FaElement::mma(acc_dq[2 * dp], a, b);
                        FaElement::mma(acc_dq[2 * dp + 1], a, b + 2);
                    }
                }
                float* dq_rows = dq_accum + (((long long)batch * seqlen_q) * p.heads_q + head) * p.head_dim;
#pragma unroll
                for (int half = 0; half < 2; ++half) {
                    const int q = q0 + dq_group * 16 + g + 8 * half;
                    if (q < seqlen_q) {
                        float* row = dq_rows + (long long)q * p.heads_q * p.head_dim;
#pragma unroll
                        for (int nt = 0; nt < kDqCols / 8; ++nt) {
                            const int c = dq_col0 + nt * 8 + 2 * t;
                            if (c < p.head_dim) {
#if FA_DETERMINISTIC
                                row[c] += acc_dq[nt][2 * half];
                                row[c + 1] += acc_dq[nt][2 * half + 1];
#elif __CUDA_ARCH__ >= 900
                                // sm_90: one vector reduction for the thread's two adjacent columns (half the atomics).
                                asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" :: "l"(row + c), "f"(acc_dq[nt][2 * half]), "f"(acc_dq[nt][2 * half + 1]) : "memory");
#else
                                atomicAdd(row + c, acc_dq[nt][2 * half]);
                                atomicAdd(row + c + 1, acc_dq[nt][2 * half + 1]);
#endif
                            }
                        }
                    }
                }
            }
        }

        // dK, dV of this key block (rows past seqlen_k are not written).
        u16* dk = (u16*)p.dk + batch * p.dk_batch_stride + head_kv * p.dk_head_stride;
        u16* dv = (u16*)p.dv + batch * p.dv_batch_stride + head_kv * p.dv_head_stride;
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int key = key0 + warp * 16 + g + 8 * half;
            if (key < seqlen_k) {
#pragma unroll
                for (int nt = 0; nt < kD / 8; ++nt) {
                    const int c = nt * 8 + 2 * t;
                    if (c < p.head_dim) {
                        *(u32*)(dk + key * p.dk_row_stride + c) = FaElement::pack(acc_dk[nt][2 * half], acc_dk[nt][2 * half + 1]);
                        *(u32*)(dv + key * p.dv_row_stride + c) = FaElement::pack(acc_dv[nt][2 * half], acc_dv[nt][2 * half + 1]);
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
extern "C" __global__ void flash_bwd_convert(const FlashBwdParams p) {
    // One thread per (batch, row, head, column pair): dQ = sum over splits, in split order.
    const long long pairs = (long long)p.batch * p.seqlen_q * p.heads_q * (p.head_dim / 2);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < pairs; i += (long long)gridDim.x * blockDim.x) {
        const int c = (int)(i % (p.head_dim / 2)) * 2;
        long long rest = i / (p.head_dim / 2);
        const int h = (int)(rest % p.heads_q);
        rest /= p.heads_q;
        const int r = (int)(rest % p.seqlen_q);
        const int b = (int)(rest / p.seqlen_q);
        const long long at = (((long long)b * p.seqlen_q + r) * p.heads_q + h) * p.head_dim + c;
        float x = 0.f, y = 0.f;
        for (int s = 0; s < p.splits; ++s) {
            x += p.dq_accum[s * p.dq_accum_split_stride + at];
            y += p.dq_accum[s * p.dq_accum_split_stride + at + 1];
        }
        u16* dq = (u16*)p.dq + b * p.dq_batch_stride + r * p.dq_row_stride + h * p.dq_head_stride + c;
        *(u32*)dq = FaElement::pack(x, y);
    }
}
