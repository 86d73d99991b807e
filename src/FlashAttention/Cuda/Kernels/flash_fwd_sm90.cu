// FlashAttention forward for Hopper (sm_90a) with warpgroup MMAs: the FlashAttention-2 algorithm of flash_fwd.cu (one
// CTA per (query block, head, batch), online softmax in registers, K and V double-buffered across the two halves of each
// key block, key blocks visited from the last visible one down), with both products on wgmma:
//   S = Q K^T   m64 x BN x 16 steps, A (Q) and B (K) read from shared memory through descriptors (K-major);
//   O += P V    m64 x D x 16 steps, A (P) from the registers the softmax left it in, B (V) from shared memory (N-major).
// Each warpgroup owns 64 query rows (two per CTA; one in the narrow-window variant); inside a warpgroup warp w owns rows 16w..16w+15 in the same fragment
// layout as mma.sync's, so the mask and softmax code is the FA2 kernel's with one m-tile per warp.
// All threads load tiles with cp.async and the warpgroups meet at two CTA barriers per key block. (A cp.async
// producer warp with mbarriers was correct but 25-30% slower on the H100: one warp cannot issue the copies fast enough;
// bench/NOTES.md, and the code is in the history at fba02bf. A TMA producer is the next attempt.)
// Tiles are stored in 64-column panels of 128-byte rows with the 128-byte swizzle wgmma reads (chunk ^ row % 8 inside
// 1024-byte atoms), each tile 1024-byte aligned.
// Softcap and ALiBi are compile-time variants (fa_score_mods.cuh), as in flash_fwd.cu: ALiBi alone folds into the S
// accumulators' seed and a per-row shift on blocks that lie on one side of every diagonal.
// Not here (the launcher sends it to flash_fwd.cu): dropout.
// Variant (-D options): FA_HEAD_DIM (64, 128, 192, 256), FA_BLOCK_N (64, 128), FA_WARPGROUPS (2; 1 for narrow windows,
// whose key range slides with the query block, so 64-row blocks waste half the edge tiles of 128-row ones), FA_BF16,
// FA_MIN_BLOCKS (1, 2, 4), FA_SOFTCAP, FA_ALIBI.
#include "fa_ptx.cuh"
#include "fa_params.cuh"
#include "fa_varlen.cuh"
#include "fa_wgmma.cuh"
#include "fa_panels.cuh"
#include "fa_score_mods.cuh"

#ifndef FA_BLOCK_N
#define FA_BLOCK_N 128
#endif
// CTAs per SM the register allocation must allow (__launch_bounds__): 2 CTAs of two warpgroups (or 4 of one) cap a
// thread at 128 registers, so that several CTAs share an SM and one's softmax can overlap another's products.
#ifndef FA_MIN_BLOCKS
#define FA_MIN_BLOCKS 1
#endif
// ALiBi alone folds into the accumulators' seed; with softcap the tanh must see the bare score, so ALiBi goes per score.
#define FA_ALIBI_FOLD (FA_ALIBI && !FA_SOFTCAP)

constexpr int kD = FA_HEAD_DIM;
#ifndef FA_WARPGROUPS
#define FA_WARPGROUPS 2
#endif

constexpr int kBM = 64 * FA_WARPGROUPS, kBN = FA_BLOCK_N, kThreads = 128 * FA_WARPGROUPS;
static_assert(kD % 64 == 0 && kD <= 256 && (kBN == 64 || kBN == 128) && (FA_WARPGROUPS == 1 || FA_WARPGROUPS == 2), "sm90 forward tiling");

#if FA_BF16
typedef Bf16 FaElement;
typedef WgmmaBf16 FaWgmma;
#else
typedef Fp16 FaElement;
typedef WgmmaF16 FaWgmma;
#endif

template <int N> __device__ __forceinline__ void mma_ss(float (&d)[N / 2], u64 a, u64 b);
template <> __device__ __forceinline__ void mma_ss<64>(float (&d)[32], u64 a, u64 b) { FaWgmma::ss64(d, a, b); }
template <> __device__ __forceinline__ void mma_ss<128>(float (&d)[64], u64 a, u64 b) { FaWgmma::ss128(d, a, b); }
template <int N> __device__ __forceinline__ void mma_rs(float (&d)[N / 2], const u32 (&a)[4], u64 b);
template <> __device__ __forceinline__ void mma_rs<64>(float (&d)[32], const u32 (&a)[4], u64 b) { FaWgmma::rs64(d, a, b); }
template <> __device__ __forceinline__ void mma_rs<128>(float (&d)[64], const u32 (&a)[4], u64 b) { FaWgmma::rs128(d, a, b); }
template <> __device__ __forceinline__ void mma_rs<192>(float (&d)[96], const u32 (&a)[4], u64 b) { FaWgmma::rs192(d, a, b); }
template <> __device__ __forceinline__ void mma_rs<256>(float (&d)[128], const u32 (&a)[4], u64 b) { FaWgmma::rs256(d, a, b); }

// The per-block state of one consumer thread: its O accumulators and the running max and sum of its two rows.
struct RowState {
    float acc_o[kD / 8 * 4];
    float row_max[2], row_sum[2];
};

// Where this CTA's rows sit: the query block, its visible key blocks, the sequence's pointers.
struct BlockFrame {
    int row0, last_row, offset, seqlen_q, seqlen_k, n_block_min, n_block_max;
    float raw_slope;   // ALiBi slope in raw-score units (0 without FA_ALIBI)
    const u16 *q, *k, *v;
    u16* o;
    float* lse;
};

__device__ __forceinline__ bool block_frame(const FlashFwdParams& p, BlockFrame& f) {
    const int m_block = p.window_right >= 0 ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const int head = blockIdx.y, batch = blockIdx.z;
    const SequenceRange seq = sequence_range(p, batch);
    f.seqlen_q = seq.seqlen_q;
    f.seqlen_k = seq.seqlen_k;
    f.row0 = m_block * kBM;
    if (f.row0 >= f.seqlen_q) return false;
    const int head_kv = head / (p.heads_q / p.heads_kv);
    f.raw_slope = alibi_raw_slope(p.alibi_slopes, p.alibi_batch_stride, p.alibi_factor, batch, head);
    f.q = (const u16*)p.q + batch * p.q_batch_stride + seq.q_start * p.q_row_stride + head * p.q_head_stride;
    f.k = (const u16*)p.k + batch * p.k_batch_stride + seq.k_start * p.k_row_stride + head_kv * p.k_head_stride;
    f.v = (const u16*)p.v + batch * p.v_batch_stride + seq.k_start * p.v_row_stride + head_kv * p.v_head_stride;
    f.o = (u16*)p.o + batch * p.o_batch_stride + seq.q_start * p.o_row_stride + head * p.o_head_stride;
    f.lse = p.lse + batch * p.lse_batch_stride + head * p.lse_head_stride + seq.q_start;
    // Visible keys of this query block (bottom-right aligned diagonal: offset = seqlen_k - seqlen_q).
    f.offset = f.seqlen_k - f.seqlen_q;
    f.last_row = min(f.row0 + kBM, f.seqlen_q) - 1;
    int key_end = f.seqlen_k, key_begin = 0;
    if (p.window_right >= 0) key_end = max(0, min(f.seqlen_k, f.last_row + f.offset + p.window_right + 1));
    if (p.window_left >= 0) key_begin = max(0, f.row0 + f.offset - p.window_left);
    f.n_block_min = key_begin / kBN;
    f.n_block_max = (key_end + kBN - 1) / kBN;
    return true;
}

__device__ __forceinline__ void init_rows(RowState& st) {
#pragma unroll
    for (int i = 0; i < kD / 8 * 4; ++i) st.acc_o[i] = 0.f;
    st.row_max[0] = st.row_max[1] = -FA_INF;
    st.row_sum[0] = st.row_sum[1] = 0.f;
}

// The S accumulators' starting values, and what the softmax must take out of each row: zero, or with the ALiBi fold
// on a block whose keys all lie on one side of every row's diagonal, the bias -slope * |diagonal - key| split into a key
// term (the seed, which the MMA adds the scores onto for free) and a row term (row_shift, taken out of the row max and
// the exp2 bias once per row). Keys count from the block's first diagonal, so both terms stay small where the
// probabilities matter. Returns whether the per-score modifiers must still run (blocks that cross a diagonal).
__device__ __forceinline__ bool seed_scores(float (&acc_s)[kBN / 8 * 4], float (&row_shift)[2], const BlockFrame& f, int col0,
                                            int warp_row0, int g, int t) {
#if FA_ALIBI_FOLD
    const int first_diagonal = f.row0 + f.offset;
    const float side = col0 + kBN - 1 <= first_diagonal ? 1.f : (col0 >= f.last_row + f.offset ? -1.f : 0.f);
    const float key_slope = side * f.raw_slope;
    const float key0 = (float)(col0 + 2 * t - first_diagonal);
    row_shift[0] = key_slope * (float)(warp_row0 + g);
    row_shift[1] = key_slope * (float)(warp_row0 + g + 8);
#pragma unroll
    for (int nt = 0; nt < kBN / 8; ++nt) {
        acc_s[nt * 4 + 0] = acc_s[nt * 4 + 2] = key_slope * (key0 + (float)(nt * 8));
        acc_s[nt * 4 + 1] = acc_s[nt * 4 + 3] = key_slope * (key0 + (float)(nt * 8 + 1));
    }
    return side == 0.f;
#else
    row_shift[0] = row_shift[1] = 0.f;
#pragma unroll
    for (int i = 0; i < kBN / 8 * 4; ++i) acc_s[i] = 0.f;
    return FA_SOFTCAP || FA_ALIBI;
#endif
}

// S += Q K^T for this warpgroup's 64 rows onto the seeded accumulators (waits for the result).
__device__ __forceinline__ void scores(float (&acc_s)[kBN / 8 * 4], u64 desc_q, u64 desc_k) {
    wgmma_fence();
#pragma unroll
    for (int j = 0; j < kD / 16; ++j) mma_ss<kBN>(acc_s, desc_q + kmajor_step<kBM>(j), desc_k + kmajor_step<kBN>(j));
    wgmma_commit();
    wgmma_wait<0>();
}

// Masks the block's scores where needed, then the online softmax on raw scores as flash_fwd.cu: base = fl(m c),
// P = exp2(S c - base) left in acc_s, O and l rescaled by exp2(base_old - base).
__device__ __forceinline__ void softmax_block(float (&acc_s)[kBN / 8 * 4], RowState& st, const FlashFwdParams& p, const BlockFrame& f,
                                              int col0, int warp_row0, int g, int t, const float (&row_shift)[2], bool per_score_mods) {
    constexpr int kSTiles = kBN / 8, kOTiles = kD / 8;
#if FA_SOFTCAP || FA_ALIBI
    // Softcap and ALiBi on every score, before the mask (tanh(-inf) would not stay -inf).
    if (per_score_mods)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            // diagonal - col for the thread's first column of the block; the n-tile adds a constant.
            const float distance0 = (float)(f.row0 + warp_row0 + g + (i >= 2 ? 8 : 0) + f.offset - col0 - 2 * t - (i & 1));
            float unused_dtanh;
#pragma unroll
            for (int nt = 0; nt < kSTiles; ++nt)
                acc_s[nt * 4 + i] = modify_score(acc_s[nt * 4 + i], p.softcap_pre, f.raw_slope, distance0 - (float)(nt * 8), unused_dtanh);
        }
#endif
    // Element masks (-inf) only on blocks that cross the seqlen_k tail or a window edge.
    const bool need_mask = col0 + kBN > f.seqlen_k
        || (p.window_right >= 0 && col0 + kBN - 1 > f.row0 + f.offset + p.window_right)
        || (p.window_left >= 0 && col0 < f.last_row + f.offset - p.window_left);
    if (need_mask) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int diagonal = f.row0 + warp_row0 + g + (i >= 2 ? 8 : 0) + f.offset;
            const int visible_end = p.window_right >= 0 ? min(f.seqlen_k, diagonal + p.window_right + 1) : f.seqlen_k;
            const int visible_begin = p.window_left >= 0 ? diagonal - p.window_left : 0;
#pragma unroll
            for (int nt = 0; nt < kSTiles; ++nt) {
                const int col = col0 + nt * 8 + 2 * t + (i & 1);
                acc_s[nt * 4 + i] = (col < visible_begin || col >= visible_end) ? -FA_INF : acc_s[nt * 4 + i];
            }
        }
    }
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        // The accumulators hold score + row_shift (0 unless the ALiBi fold is on); row_max is in score units.
        const float shift = row_shift[half];
        float m = -FA_INF;
#pragma unroll
        for (int nt = 0; nt < kSTiles; ++nt) m = fmaxf(m, fmaxf(acc_s[nt * 4 + 2 * half], acc_s[nt * 4 + 2 * half + 1]));
        m = fmaxf(st.row_max[half], quad_max(m) - shift);
        const float base = m == -FA_INF ? 0.f : __fmul_rn(m, p.scale_log2);
        const float rescale = fast_exp2(__fmul_rn(st.row_max[half], p.scale_log2) - base);
#if FA_ALIBI_FOLD
        const float exp_bias = -fmaf(shift, p.scale_log2, base);
#else
        const float exp_bias = -base;
#endif
        st.row_max[half] = m;
        float sum = 0.f;
#pragma unroll
        for (int nt = 0; nt < kSTiles; ++nt) {
            const float p0 = fast_exp2(fmaf(acc_s[nt * 4 + 2 * half], p.scale_log2, exp_bias));
            const float p1 = fast_exp2(fmaf(acc_s[nt * 4 + 2 * half + 1], p.scale_log2, exp_bias));
            acc_s[nt * 4 + 2 * half] = p0;
            acc_s[nt * 4 + 2 * half + 1] = p1;
            sum += p0 + p1;
        }
        st.row_sum[half] = st.row_sum[half] * rescale + sum;
#pragma unroll
        for (int nt = 0; nt < kOTiles; ++nt) {
            st.acc_o[nt * 4 + 2 * half] *= rescale;
            st.acc_o[nt * 4 + 2 * half + 1] *= rescale;
        }
    }
}

// O += P V: two adjacent n8 tiles of S are one k16 A fragment (waits for the result).
__device__ __forceinline__ void accumulate_pv(const float (&acc_s)[kBN / 8 * 4], RowState& st, u64 desc_v) {
    u32 pa[kBN / 16][4];
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) {
        pa[kk][0] = FaElement::pack(acc_s[(2 * kk) * 4 + 0], acc_s[(2 * kk) * 4 + 1]);
        pa[kk][1] = FaElement::pack(acc_s[(2 * kk) * 4 + 2], acc_s[(2 * kk) * 4 + 3]);
        pa[kk][2] = FaElement::pack(acc_s[(2 * kk + 1) * 4 + 0], acc_s[(2 * kk + 1) * 4 + 1]);
        pa[kk][3] = FaElement::pack(acc_s[(2 * kk + 1) * 4 + 2], acc_s[(2 * kk + 1) * 4 + 3]);
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBN / 16; ++kk) mma_rs<kD>(st.acc_o, pa[kk], desc_v + mnmajor_step(kk));
    wgmma_commit();
    wgmma_wait<0>();
}

// Epilogue: O / l and LSE = base ln 2 + ln l; a row that saw no key writes O = 0 and LSE = +inf. O goes through this
// warp's own rows of the Q tile (every wgmma reading them has completed) so the global stores are 16-byte chunks.
__device__ __forceinline__ void store_rows(const RowState& st, const FlashFwdParams& p, const BlockFrame& f, u32 sQ, int warp_row0, int lane) {
    constexpr int kOTiles = kD / 8;
    const int g = lane / 4, t = lane % 4;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
        const int tile_row = warp_row0 + g + 8 * half;
        const float sum = quad_sum(st.row_sum[half]);
        const bool empty = !(sum > 0.f);
        const float inv = empty ? 0.f : 1.f / sum;
#pragma unroll
        for (int nt = 0; nt < kOTiles; ++nt) {
            const u32 packed = FaElement::pack(st.acc_o[nt * 4 + 2 * half] * inv, st.acc_o[nt * 4 + 2 * half + 1] * inv);
            asm volatile("st.shared.u32 [%0], %1;" :: "r"(sQ + panel_offset<kBM>(tile_row, nt) + 4 * t), "r"(packed));
        }
        const int row = f.row0 + tile_row;
        if (t == 0 && row < f.seqlen_q)
            f.lse[row] = empty ? FA_INF : fmaf(__fmul_rn(st.row_max[half], p.scale_log2), 0.69314718055994531f, __logf(sum));
    }
    __syncwarp();
    constexpr int kChunks = kD / 8;
#pragma unroll
    for (int i = 0; i < 16 * kChunks / 32; ++i) {
        const int idx = lane + i * 32;
        const int tile_row = warp_row0 + idx / kChunks, c = idx % kChunks;
        const int row = f.row0 + tile_row;
        if (row < f.seqlen_q && c * 8 < p.head_dim) {
            u32 x, y, z, w;
            asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(x), "=r"(y), "=r"(z), "=r"(w) : "r"(sQ + panel_offset<kBM>(tile_row, c)));
            u16* dst = f.o + (long long)row * p.o_row_stride + c * 8;
            asm volatile("st.global.v4.u32 [%0], {%1,%2,%3,%4};" :: "l"(dst), "r"(x), "r"(y), "r"(z), "r"(w));
        }
    }
}

extern "C" __global__ void __launch_bounds__(kThreads, FA_MIN_BLOCKS) flash_fwd_sm90_kernel(const FlashFwdParams p) {
    extern __shared__ __align__(1024) unsigned char smem[];
    const u32 sQ = (smem_addr(smem) + 1023u) & ~1023u;   // the launcher adds 1024 bytes of slack
    const u32 sK = sQ + kBM * kD * 2, sV = sK + kBN * kD * 2;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
    const int warpgroup = warp / 4, warp_row0 = warpgroup * 64 + (warp % 4) * 16;

    BlockFrame f;
    if (!block_frame(p, f)) return;
    const u64 desc_q = wgmma_desc_sw128(sQ + warpgroup * 64 * kPanelRowBytes, 16, 1024);
    const u64 desc_k = wgmma_desc_sw128(sK, 16, 1024);
    const u64 desc_v = wgmma_desc_sw128(sV, kBN * kPanelRowBytes, 1024);
    RowState st;
    init_rows(st);

    if (f.n_block_min < f.n_block_max) {
        load_panels<kD, kBM, kThreads>(sQ, f.q, p.q_row_stride, f.row0, f.seqlen_q, p.head_dim, tid);
        load_panels<kD, kBN, kThreads>(sK, f.k, p.k_row_stride, (f.n_block_max - 1) * kBN, f.seqlen_k, p.head_dim, tid);
        cp_async_commit();
    }
    for (int n_block = f.n_block_max - 1; n_block >= f.n_block_min; --n_block) {
        const int col0 = n_block * kBN;
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();  // K[n] (and Q) landed and visible to wgmma; every warp is done with V[n+1]
        load_panels<kD, kBN, kThreads>(sV, f.v, p.v_row_stride, col0, f.seqlen_k, p.head_dim, tid);
        cp_async_commit();
        float acc_s[kBN / 8 * 4], row_shift[2];
        const bool per_score_mods = seed_scores(acc_s, row_shift, f, col0, warp_row0, g, t);
        scores(acc_s, desc_q, desc_k);
        softmax_block(acc_s, st, p, f, col0, warp_row0, g, t, row_shift, per_score_mods);
        cp_async_wait<0>();
        fence_proxy_async();
        __syncthreads();  // V[n] landed and visible to wgmma; every warp is done with K[n]
        if (n_block > f.n_block_min) {
            load_panels<kD, kBN, kThreads>(sK, f.k, p.k_row_stride, (n_block - 1) * kBN, f.seqlen_k, p.head_dim, tid);
            cp_async_commit();
        }
        accumulate_pv(acc_s, st, desc_v);
    }
    store_rows(st, p, f, sQ, warp_row0, lane);
}
