// Shared by the FlashAttention-2 backward kernels (flash_bwd.cu for head dims up to 128, flash_bwd_wide.cu above):
// the element type, the D pre-pass, the dQ conversion, per-lane ldmatrix offsets and the S = A B^T warp GEMM.
// The includer defines kD (the head-dim bucket) before including this header.
#pragma once
#include "fa_ptx.cuh"
#include "fa_bwd_params.cuh"
#include "fa_tile.cuh"
#include "fa_panels.cuh"
#include "fa_elements.cuh"
#include "fa_score_mods.cuh"
#include "fa_varlen.cuh"

#if FA_BF16
typedef BfloatElem FaElement;
#else
typedef HalfElem FaElement;
#endif

#ifndef FA_DROPOUT
#define FA_DROPOUT 0
#endif

constexpr int kRowBytes = kD * 2;

// ---------------------------------------------------------------------------------------------------------
// The per-row passes (D pre-pass, dQ conversion) are memory-bound: each thread moves one 16-byte chunk (8 elements) of
// one (batch, row, head) row, and the chunks of a row sit in one segment of row_lanes(head_dim) lanes (a power of two, up
// to a warp), so a row's sum is a few segment shuffles. Rows are walked grid-stride in (batch, row, head) order, which is
// memory order for the dense layouts. The launcher sizes the grid with the same rule (CudaBackward.RowPassBlocks).
__device__ __forceinline__ int row_lanes(int head_dim) {
    const int chunks = head_dim / 8;
    return chunks <= 8 ? 8 : chunks <= 16 ? 16 : 32;
}

struct RowOfPass {
    int b, r, h;
};
__device__ __forceinline__ RowOfPass row_of_pass(const FlashBwdParams& p, long long row) {
    RowOfPass x;
    x.h = (int)(row % p.heads_q);
    const long long rest = row / p.heads_q;
    x.r = (int)(rest % p.seqlen_q);
    x.b = (int)(rest / p.seqlen_q);
    return x;
}

extern "C" __global__ void flash_bwd_prepare(const FlashBwdParams p) {
    // D = sum_c dO[c] * O[c] per row, and that row's dQ accumulators (all splits) zeroed in the same pass.
    const int seg = row_lanes(p.head_dim), c = threadIdx.x % seg;
    const long long rows = (long long)p.batch * p.seqlen_q * p.heads_q, rows_per_step = (long long)gridDim.x * (blockDim.x / seg);
    const bool in_row = c * 8 < p.head_dim;
    // The loop runs while the warp's first row exists (the shuffles below need the whole warp); later rows are predicated.
    for (long long row = blockIdx.x * (long long)(blockDim.x / seg) + threadIdx.x / seg; row - (threadIdx.x % 32) / seg < rows;
         row += rows_per_step) {
        const bool valid = row < rows;
        const RowOfPass x = row_of_pass(p, valid ? row : 0);
        float sum = 0.f;
        if (valid && in_row) {
            const U16x8 o = *(const U16x8*)((const u16*)p.o + x.b * p.o_batch_stride + x.r * p.o_row_stride + x.h * p.o_head_stride + c * 8);
            const U16x8 d = *(const U16x8*)((const u16*)p.dout + x.b * p.do_batch_stride + x.r * p.do_row_stride + x.h * p.do_head_stride + c * 8);
#pragma unroll
            for (int e = 0; e < 8; ++e) sum = fmaf(FaElement::to_float(lane(o, e)), FaElement::to_float(lane(d, e)), sum);
            float4* acc = (float4*)(p.dq_accum + row * p.head_dim + c * 8);
            for (int s = 0; s < p.splits; ++s) {
                acc[0] = make_float4(0.f, 0.f, 0.f, 0.f);
                acc[1] = make_float4(0.f, 0.f, 0.f, 0.f);
                acc += p.dq_accum_split_stride / 4;
            }
        }
        for (int m = seg / 2; m > 0; m /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, m, seg);
        if (valid && c == 0) p.delta[x.b * p.lse_batch_stride + x.h * p.lse_head_stride + x.r] = sum;
    }
}

// ---------------------------------------------------------------------------------------------------------
extern "C" __global__ void flash_bwd_convert(const FlashBwdParams p) {
    // dQ = scale * (sum over splits, in split order), one 8-element chunk per thread, stored as 16 bytes.
    const int seg = row_lanes(p.head_dim), c = threadIdx.x % seg;
    const long long rows = (long long)p.batch * p.seqlen_q * p.heads_q, rows_per_step = (long long)gridDim.x * (blockDim.x / seg);
    if (c * 8 >= p.head_dim) return;   // no shuffles below: idle lanes may leave
    for (long long row = blockIdx.x * (long long)(blockDim.x / seg) + threadIdx.x / seg; row < rows; row += rows_per_step) {
        const RowOfPass x = row_of_pass(p, row);
        const float4* acc = (const float4*)(p.dq_accum + row * p.head_dim + c * 8);
        float4 lo = acc[0], hi = acc[1];
        for (int s = 1; s < p.splits; ++s) {
            acc += p.dq_accum_split_stride / 4;
            const float4 a = acc[0], b = acc[1];
            lo.x += a.x; lo.y += a.y; lo.z += a.z; lo.w += a.w;
            hi.x += b.x; hi.y += b.y; hi.z += b.z; hi.w += b.w;
        }
        // The main kernel leaves the softmax scale out of dS (one multiply per score saved); it enters here.
        const float k = p.scale;
        U16x8 out;
        out.w[0] = FaElement::pack(lo.x * k, lo.y * k);
        out.w[1] = FaElement::pack(lo.z * k, lo.w * k);
        out.w[2] = FaElement::pack(hi.x * k, hi.y * k);
        out.w[3] = FaElement::pack(hi.z * k, hi.w * k);
        *(U16x8*)((u16*)p.dq + x.b * p.dq_batch_stride + x.r * p.dq_row_stride + x.h * p.dq_head_stride + c * 8) = out;
    }
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

// Per-lane offsets of the B operand read transposed ([k][d] tiles of kD columns) for the 16-byte chunk pairs
// chunk0 + 2j (j = 0..3) of one lane's row: chunk0 need not be a multiple of 8, so the swizzle is evaluated in full.
// Chunk pairs further on repeat every 8 chunks (128 bytes).
__device__ __forceinline__ void lane_offsets_bt(u32 (&bt)[4], int lane, int chunk0) {
#pragma unroll
    for (int j = 0; j < 4; ++j) bt[j] = swizzle<kD>(((lane / 8) % 2) * 8 + lane % 8, chunk0 + 2 * j + lane / 16);
}

// Lane address offset for dQ's A operand: dS (queries x keys) read transposed, by ldmatrix .trans, out of the swizzled
// dS^T[key][query] tile with rows of COLS queries, for query row group `group` (queries 16 * group + 0..15) and the first
// 16 keys: lane rows = keys (lane / 16) * 8 + lane % 8, chunk = 2 * group + (lane / 8) % 2, which yields a0..a3 in order.
// The next 16 keys are 16 rows further on (the swizzle keeps row % 8).
template <int COLS>
__device__ __forceinline__ u32 ds_lane_offset(int lane, int group) {
    return swizzle<COLS>((lane / 16) * 8 + lane % 8, 2 * group + (lane / 8) % 2);
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


// Stores a warp's 16 x (8 * NT) fp32 C-fragment tile as 16-bit values into a swizzled [row][column] tile with rows of
// COLS elements, at rows row0..row0+15 and columns from 8 * chunk0. sm_90: stmatrix writes four 8x8 matrices per
// instruction. kPositivePart stores max(x, 0) (dropout keeps dropped probabilities negated; dV takes the kept ones).
template <int COLS, int NT, bool kPositivePart = false>
__device__ __forceinline__ void store_frag_tile(u32 tile, int row0, int chunk0, const float (&frag)[NT][4], int lane) {
    auto v = [](float x) { return kPositivePart ? fmaxf(x, 0.f) : x; };
#if __CUDA_ARCH__ >= 900
    static_assert(NT % 2 == 0, "stmatrix.x4 covers two n-tiles");
    // Lane l gives the address of row l % 8 of matrix l / 8: matrices (rows 0-7 | 8-15) x (n-tile 2np | 2np+1).
    const int row = row0 + ((lane / 8) & 1) * 8 + lane % 8;
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
        const u32 r0 = FaElement::pack(v(frag[2 * np][0]), v(frag[2 * np][1]));
        const u32 r1 = FaElement::pack(v(frag[2 * np][2]), v(frag[2 * np][3]));
        const u32 r2 = FaElement::pack(v(frag[2 * np + 1][0]), v(frag[2 * np + 1][1]));
        const u32 r3 = FaElement::pack(v(frag[2 * np + 1][2]), v(frag[2 * np + 1][3]));
        asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1, %2, %3, %4};"
                     :: "r"(tile + swizzle<COLS>(row, chunk0 + 2 * np + lane / 16)), "r"(r0), "r"(r1), "r"(r2), "r"(r3));
    }
#else
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const u32 packed = FaElement::pack(v(frag[nt][2 * half]), v(frag[nt][2 * half + 1]));
            asm volatile("st.shared.u32 [%0], %1;" :: "r"(tile + swizzle<COLS>(row0 + g + 8 * half, chunk0 + nt) + 4 * t), "r"(packed));
        }
#endif
}

// Adds an fp32 pair to the dQ accumulator: a plain add when deterministic (the split owns its buffer), else
// an atomic (sm_90: one vector reduction for the pair, half the atomics).
__device__ __forceinline__ void add_dq_pair(float* at, float x, float y) {
#if FA_DETERMINISTIC
    at[0] += x;
    at[1] += y;
#elif __CUDA_ARCH__ >= 900
    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" :: "l"(at), "f"(x), "f"(y) : "memory");
#else
    atomicAdd(at, x);
    atomicAdd(at + 1, y);
#endif
}

template <int NT, bool kAllColumns>
__device__ __forceinline__ void add_dq_rows(float* dq_rows, long long row_stride, const float (&acc)[NT][4], int q_row0, int seqlen_q,
                                            int col0, int head_dim, int lane) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int q = q_row0 + g + 8 * half;
        if (q < seqlen_q) {
            float* row = dq_rows + (long long)q * row_stride;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int c = col0 + nt * 8 + 2 * t;
                if (kAllColumns || c < head_dim) add_dq_pair(row + c, acc[nt][2 * half], acc[nt][2 * half + 1]);
            }
        }
    }
}

// Adds a warp's 16 x (8 * NT) dQ tile (C fragments) to accumulator rows [q_row0, +16), columns [col0, +8 * NT); columns at or
// past head_dim (the bucket's padding) are skipped, with the checks compiled out when the whole tile is inside.
template <int NT>
__device__ __forceinline__ void add_dq_tile(float* dq_rows, long long row_stride, const float (&acc)[NT][4], int q_row0, int seqlen_q,
                                            int col0, int head_dim, int lane) {
    if (col0 + 8 * NT <= head_dim) add_dq_rows<NT, true>(dq_rows, row_stride, acc, q_row0, seqlen_q, col0, head_dim, lane);
    else add_dq_rows<NT, false>(dq_rows, row_stride, acc, q_row0, seqlen_q, col0, head_dim, lane);
}

// Writes a warp's 16 x (8 * NT) tile of dK or dV (C fragments times `scale`) as 16-bit values to key rows [key0, +16),
// columns [col0, +8 * NT); rows at or past seqlen_k and columns at or past head_dim are not written.
template <int NT>
__device__ __forceinline__ void store_key_rows(u16* base, long long row_stride, const float (&acc)[NT][4], float scale, int key0,
                                               int seqlen_k, int col0, int head_dim, int lane) {
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int key = key0 + g + 8 * half;
        if (key < seqlen_k) {
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int c = col0 + nt * 8 + 2 * t;
                if (c < head_dim) *(u32*)(base + key * row_stride + c) = FaElement::pack(acc[nt][2 * half] * scale, acc[nt][2 * half + 1] * scale);
            }
        }
    }
}

// 1 - tanh^2 of a warp's capped scores, kept from probabilities_t for ds_from_dp (an empty struct without softcap).
template <int NT>
struct SoftcapGrad {
#if FA_SOFTCAP
    float dtanh[NT][4];
#endif
};

// P^T = exp2(S^T * scale*log2(e) - LSE*log2(e)) in place over a warp's 16 keys x 8*NT queries (C fragments): rows are keys
// key_row0 + g (+8), columns queries q_col0 + 8*nt + 2t (+1), whose LSE * log2(e) are at lse2[8*nt + 2t] (padded query
// rows carry +inf there, so their P is exactly 0). Softcap and ALiBi (fa_score_mods.cuh) modify S^T first. kMask applies
// the seqlen_k tail and the window (bottom-right aligned: offset = seqlen_k - seqlen_q). With dropout, a kept P becomes
// P / (1 - p), the value forward's P V used, and a dropped one -P: the sign carries the mask to dV and dS.
template <int NT, bool kMask>
__device__ __forceinline__ void probabilities_t_pass(float (&acc)[NT][4], SoftcapGrad<NT>& cap, const FlashBwdParams& p, const float* lse2,
                                                     int key_row0, int q_col0, int offset, int seqlen_k, float raw_slope, int stream, int lane) {
    const int g = lane / 4, t = lane % 4;
    // diagonal - key of the thread's first (query, key) pair; the others differ by compile-time constants.
    const float distance0 = (float)(q_col0 + 2 * t + offset - key_row0 - g);
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const float2 l = *(const float2*)(lse2 + nt * 8 + 2 * t);   // the thread's two query columns in one 8-byte load
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int query = q_col0 + nt * 8 + 2 * t + (i & 1), key = key_row0 + g + (i >= 2 ? 8 : 0);
            const int diagonal = query + offset;
            float dtanh = 1.f;
            const float s = modify_score(acc[nt][i], p.softcap_pre, raw_slope, distance0 + (float)(nt * 8 + (i & 1) - (i >= 2 ? 8 : 0)), dtanh);
#if FA_SOFTCAP
            cap.dtanh[nt][i] = dtanh;
#endif
            float x = fmaf(s, p.scale_log2, -((i & 1) ? l.y : l.x));
            if (kMask) {
                const bool hidden = key >= seqlen_k || (p.window_right >= 0 && key > diagonal + p.window_right)
                    || (p.window_left >= 0 && key < diagonal - p.window_left);
                if (hidden) x = -FA_INF;
            }
            acc[nt][i] = fast_exp2(x);
#if FA_DROPOUT
            const PhiloxWords w = dropout_words(p.dropout, (unsigned int)stream, query, key);
            acc[nt][i] = word_of(w, key) >= p.dropout.keep_threshold ? acc[nt][i] * p.dropout.keep_scale : -acc[nt][i];
#endif
        }
    }
}

// The mask is a compile-time pass: blocks that need no mask (most of them) run no per-element test or branch.
template <int NT>
__device__ __forceinline__ void probabilities_t(float (&acc)[NT][4], SoftcapGrad<NT>& cap, const FlashBwdParams& p, const float* lse2,
                                                int key_row0, int q_col0, int offset, int seqlen_k, bool need_mask, float raw_slope, int stream,
                                                int lane) {
    if (need_mask) probabilities_t_pass<NT, true>(acc, cap, p, lse2, key_row0, q_col0, offset, seqlen_k, raw_slope, stream, lane);
    else probabilities_t_pass<NT, false>(acc, cap, p, lse2, key_row0, q_col0, offset, seqlen_k, raw_slope, stream, lane);
}

// dS^T = P^T * (dP^T - D) in place in dp (C fragments as in probabilities_t; D of the thread's query columns at
// delta[8*nt + 2t]), times d tanh with softcap. The softmax scale is left out: it enters dK and dQ once, at the end.
template <int NT>
__device__ __forceinline__ void ds_from_dp(float (&dp)[NT][4], const float (&pt)[NT][4], const SoftcapGrad<NT>& cap, const float* delta,
                                           const FlashBwdParams& p, int lane) {
    const int t = lane % 4;
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
        const float2 d = *(const float2*)(delta + nt * 8 + 2 * t);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float delta_q = (i & 1) ? d.y : d.x, x = pt[nt][i];
#if FA_DROPOUT
            // dS = P * (Z * dP / (1 - p) - D): kept (x = P / (1 - p)): x * (dP - D (1 - p)); dropped (x = -P): x * D.
            dp[nt][i] = x >= 0.f ? x * (dp[nt][i] - delta_q / p.dropout.keep_scale) : x * delta_q;
#else
            dp[nt][i] = x * (dp[nt][i] - delta_q);
#endif
#if FA_SOFTCAP
            dp[nt][i] *= cap.dtanh[nt][i];
#endif
        }
    }
}

// Query blocks [m_first, m_last] of the sequence that may see a key of [key0, key0 + block_n) (bottom-right aligned
// window); m_last < m_first when none does.
__device__ __forceinline__ void query_block_range(const FlashBwdParams& p, const SequenceRange& seq, int key0, int block_n, int block_m,
                                                  int& m_first, int& m_last) {
    const int offset = seq.seqlen_k - seq.seqlen_q, last_key = min(key0 + block_n, seq.seqlen_k) - 1;
    int q_begin = 0, q_end = seq.seqlen_q;
    if (p.window_right >= 0) q_begin = max(0, key0 - offset - p.window_right);
    if (p.window_left >= 0) q_end = min(seq.seqlen_q, last_key - offset + p.window_left + 1);
    m_first = q_begin / block_m;
    m_last = q_end > q_begin ? (q_end - 1) / block_m : m_first - 1;
}

// Starts key block key0 of this CTA: the query blocks that see it ([m_first, m_last], empty when none) and, only when some
// do, its K and V tiles (cp.async, one commit group; kPanels: fa_panels.cuh's layout). A deterministic CTA walks several key
// blocks, and copies left in flight by one that needs none could land over the next one's: cp.async groups complete in no
// fixed order.
template <int BN, int BM, int THREADS, bool kPanels = false>
__device__ __forceinline__ void begin_key_block(const FlashBwdParams& p, const SequenceRange& seq, u32 sK, u32 sV, const u16* k_base,
                                                const u16* v_base, int key0, int tid, int& m_first, int& m_last) {
    query_block_range(p, seq, key0, BN, BM, m_first, m_last);
    if (m_last < m_first) return;
    if constexpr (kPanels) {
        load_panels<kD, BN, THREADS>(sK, k_base, p.k_row_stride, key0, seq.seqlen_k, p.head_dim, tid);
        load_panels<kD, BN, THREADS>(sV, v_base, p.v_row_stride, key0, seq.seqlen_k, p.head_dim, tid);
    } else {
        load_tile<kD, BN, THREADS>(sK, k_base, p.k_row_stride, key0, seq.seqlen_k, p.head_dim, tid);
        load_tile<kD, BN, THREADS>(sV, v_base, p.v_row_stride, key0, seq.seqlen_k, p.head_dim, tid);
    }
    cp_async_commit();
}

// Starts streaming one step's inputs into a stage: the (BM x kD) Q and dO tiles at sQ and sQ + BM rows (cp.async, one
// commit group), and the block's LSE * log2(e) and D into scalars[0, BM) and scalars[BM, 2 BM). Padded query rows get
// LSE = +inf, which makes their P exactly 0. q0 counts from the sequence's first query row.
// kPanels: the tiles in fa_panels.cuh's layout (the Hopper kernel's wgmma operands) instead of fa_tile.cuh's.
template <int BM, int THREADS, bool kPanels = false>
__device__ __forceinline__ void load_query_stage(const FlashBwdParams& p, const SequenceRange& seq, u32 sQ, float* scalars, int batch, int head,
                                                 int q0, int tid) {
    const long long first_row = seq.q_start;
    const u16* q = (const u16*)p.q + batch * p.q_batch_stride + first_row * p.q_row_stride + head * p.q_head_stride;
    const u16* dout = (const u16*)p.dout + batch * p.do_batch_stride + first_row * p.do_row_stride + head * p.do_head_stride;
    if constexpr (kPanels) {
        load_panels<kD, BM, THREADS>(sQ, q, p.q_row_stride, q0, seq.seqlen_q, p.head_dim, tid);
        load_panels<kD, BM, THREADS>(sQ + BM * kRowBytes, dout, p.do_row_stride, q0, seq.seqlen_q, p.head_dim, tid);
    } else {
        load_tile_fast<kD, BM, THREADS>(sQ, q, p.q_row_stride, q0, seq.seqlen_q, p.head_dim, tid);
        load_tile_fast<kD, BM, THREADS>(sQ + BM * kRowBytes, dout, p.do_row_stride, q0, seq.seqlen_q, p.head_dim, tid);
    }
    cp_async_commit();
    if (tid < BM) {
        const int q = q0 + tid;
        const long long at = batch * p.lse_batch_stride + head * p.lse_head_stride + first_row + q;
        scalars[tid] = q < seq.seqlen_q ? p.lse[at] * 1.4426950408889634f : FA_INF;
        scalars[BM + tid] = q < seq.seqlen_q ? p.delta[at] : 0.f;
    }
}

// Whether the (key block x query block) tile crosses the seqlen_k tail or a window edge, so it needs the masked pass.
__device__ __forceinline__ bool tile_needs_mask(const FlashBwdParams& p, const SequenceRange& seq, int key0, int block_n, int q0, int block_m) {
    const int offset = seq.seqlen_k - seq.seqlen_q;
    return key0 + block_n > seq.seqlen_k
        || (p.window_right >= 0 && key0 + block_n - 1 > q0 + offset + p.window_right)
        || (p.window_left >= 0 && key0 < q0 + block_m - 1 + offset - p.window_left);
}

// Row 0 of this CTA's sequence (batch, from its first key) in kv head head_kv of a (batch, rows, heads, dim) tensor.
template <typename P>
__device__ __forceinline__ P* key_rows(P* base, long long batch_stride, long long row_stride, long long head_stride, const SequenceRange& seq,
                                       int batch, int head_kv) {
    return base + batch * batch_stride + (long long)seq.k_start * row_stride + head_kv * head_stride;
}

// The fp32 dQ accumulators this CTA adds to: the shared buffer, or when deterministic its split's own.
__device__ __forceinline__ float* dq_accum_of_cta(const FlashBwdParams& p) {
    return p.dq_accum + (FA_DETERMINISTIC ? blockIdx.x * p.dq_accum_split_stride : 0);
}

// This sequence's rows of the fp32 dQ accumulator for `head`: row q (from the sequence's first query) at q * heads_q * head_dim.
__device__ __forceinline__ float* dq_accum_rows(float* dq_accum, const FlashBwdParams& p, const SequenceRange& seq, int batch, int head) {
    return dq_accum + batch * p.dq_accum_batch_stride + ((long long)seq.q_start * p.heads_q + head) * p.head_dim;
}
