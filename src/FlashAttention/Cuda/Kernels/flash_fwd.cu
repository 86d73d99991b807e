// FlashAttention-2 forward (sm_80+): one thread block per (query block, head, batch); warps split the
// query rows (FA2's key change over FA1), so the online softmax needs no shared-memory exchange.
//
// Tiles: Q (BM x D) stays in shared memory; K and V blocks (BN x D) are double-buffered across the two
// halves of each iteration: V[n] streams in while S = Q K[n]^T runs, K[n-1] while O += P V[n] runs.
// Key blocks are visited from the last visible one down, so the blocks that need element masks
// (the causal diagonal, the seqlen_k tail) come first and the rest run unmasked.
//
// Variant (set by the launcher as -D options): FA_HEAD_DIM (64, 128, 192, 256), FA_BLOCK_M, FA_BLOCK_N,
// FA_WARPS, FA_BF16, FA_DROPOUT, FA_SOFTCAP, FA_ALIBI (fa_score_mods.cuh). The softmax scale must be positive (the
// launcher checks).
#include "fa_ptx.cuh"
#include "fa_params.cuh"
#include "fa_tile.cuh"
#include "fa_score_mods.cuh"
#include "fa_varlen.cuh"

#ifndef FA_ROLL_QK
#define FA_ROLL_QK 0
#endif
#ifndef FA_DROPOUT
#define FA_DROPOUT 0
#endif
// ALiBi alone folds into the accumulators' seed and a per-row shift (see the key loop); with softcap the tanh must see
// the bare score first, so that variant applies ALiBi per score.
#define FA_ALIBI_FOLD (FA_ALIBI && !FA_SOFTCAP)

template <int D, int BM, int BN, int NW, typename E>
__device__ __forceinline__ void flash_fwd_block(const FlashFwdParams& p) {
    constexpr int kThreads = NW * 32;
    constexpr int kWarpRows = BM / NW;
    constexpr int kMTiles = kWarpRows / 16;   // m16 tiles per warp
    constexpr int kSTiles = BN / 8;           // n8 tiles of S per m-tile
    constexpr int kOTiles = D / 8;            // n8 tiles of O per m-tile
    static_assert(kWarpRows % 16 == 0 && D % 64 == 0 && BN % 16 == 0, "tiling");

    extern __shared__ __align__(128) unsigned char smem[];
    const u32 sQ = smem_addr(smem), sK = sQ + BM * D * 2, sV = sK + BN * D * 2;

    // With a causal (or right-windowed) mask the last query blocks see the most keys: start them first so
    // the short ones fill the tail of the grid.
    const int m_block = p.window_right >= 0 ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const int head = blockIdx.y, batch = blockIdx.z;
    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;

    const SequenceRange seq = sequence_range(p, batch);
    const int q_start = seq.q_start, k_start = seq.k_start, seqlen_q = seq.seqlen_q, seqlen_k = seq.seqlen_k;
    const int row0 = m_block * BM;
    if (row0 >= seqlen_q) return;
    const int head_kv = head / (p.heads_q / p.heads_kv);
    const float raw_slope = alibi_raw_slope(p.alibi_slopes, p.alibi_batch_stride, p.alibi_factor, batch, head);

    const u16* q = (const u16*)p.q + batch * p.q_batch_stride + q_start * p.q_row_stride + head * p.q_head_stride;
    const u16* k = (const u16*)p.k + batch * p.k_batch_stride + k_start * p.k_row_stride + head_kv * p.k_head_stride;
    const u16* v = (const u16*)p.v + batch * p.v_batch_stride + k_start * p.v_row_stride + head_kv * p.v_head_stride;
    u16* o = (u16*)p.o + batch * p.o_batch_stride + q_start * p.o_row_stride + head * p.o_head_stride;
    float* lse = p.lse + batch * p.lse_batch_stride + head * p.lse_head_stride + q_start;

    // Visible keys of this query block (bottom-right aligned diagonal: offset = seqlen_k - seqlen_q).
    const int offset = seqlen_k - seqlen_q;
    const int last_row = min(row0 + BM, seqlen_q) - 1;
    int key_end = seqlen_k, key_begin = 0;
    if (p.window_right >= 0) key_end = max(0, min(seqlen_k, last_row + offset + p.window_right + 1));
    if (p.window_left >= 0) key_begin = max(0, row0 + offset - p.window_left);
    const int n_block_min = key_begin / BN;
    const int n_block_max = (key_end + BN - 1) / BN;

    const int warp_row0 = warp * kWarpRows;

    // Per-lane ldmatrix offsets. Every fragment row group starts at a multiple of 8 rows, so the swizzle
    // (chunk ^ row % 8) depends only on lane % 8 and on the chunk's low bits, which cycle with period 4 in
    // the k (or dim) step. Four per-lane offsets per operand plus compile-time constants then address every
    // fragment: one register + immediate per ldmatrix instead of a chain of integer ops.
    constexpr int kRowBytes = D * 2;
    const int l8 = lane % 8;
    u32 q_off[4], k_off[4], v_off[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        q_off[j] = sQ + (warp_row0 + lane % 16) * kRowBytes + ((((lane / 16) ^ l8) ^ (2 * j)) << 4);
        k_off[j] = sK + ((lane / 16) * 8 + l8) * kRowBytes + (((((lane / 8) % 2) ^ l8) ^ (2 * j)) << 4);
        v_off[j] = sV + (((lane / 8) % 2) * 8 + l8) * kRowBytes + ((((lane / 16) ^ l8) ^ (2 * j)) << 4);
    }
    float acc_o[kMTiles][kOTiles][4];
    float row_max[kMTiles][2], row_sum[kMTiles][2];
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt) {
#pragma unroll
        for (int nt = 0; nt < kOTiles; ++nt) acc_o[mt][nt][0] = acc_o[mt][nt][1] = acc_o[mt][nt][2] = acc_o[mt][nt][3] = 0.f;
        row_max[mt][0] = row_max[mt][1] = -FA_INF;
        row_sum[mt][0] = row_sum[mt][1] = 0.f;
    }

    if (n_block_min < n_block_max) {
        load_tile<D, BM, kThreads>(sQ, q, p.q_row_stride, row0, seqlen_q, p.head_dim, tid);
        load_tile<D, BN, kThreads>(sK, k, p.k_row_stride, (n_block_max - 1) * BN, seqlen_k, p.head_dim, tid);
        cp_async_commit();
    }

    for (int n_block = n_block_max - 1; n_block >= n_block_min; --n_block) {
        const int col0 = n_block * BN;
        float acc_s[kMTiles][kSTiles][4];
#if FA_ALIBI_FOLD
        // ALiBi without softcap, on a block whose keys all lie on one side of every row's diagonal: the bias
        // -slope * |diagonal - key| splits into a key term, which seeds the S accumulators (so the MMA adds the
        // scores onto it for free), and a row term (row_shift) that the softmax below takes out per row, not per
        // score. Keys are counted from the block's first diagonal, so both terms stay small near the diagonal,
        // where the probabilities are not negligible. Blocks that cross a diagonal take the per-score path.
        const int first_diagonal = row0 + offset;
        const float side = col0 + BN - 1 <= first_diagonal ? 1.f : (col0 >= last_row + offset ? -1.f : 0.f);
        const float key_slope = side * raw_slope;
        const float key0 = (float)(col0 + 2 * t - first_diagonal);
        float row_shift[kMTiles][2];
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt) {
            row_shift[mt][0] = key_slope * (float)(warp_row0 + mt * 16 + g);
            row_shift[mt][1] = key_slope * (float)(warp_row0 + mt * 16 + g + 8);
#pragma unroll
            for (int nt = 0; nt < kSTiles; ++nt) {
                acc_s[mt][nt][0] = acc_s[mt][nt][2] = key_slope * (key0 + (float)(nt * 8));
                acc_s[mt][nt][1] = acc_s[mt][nt][3] = key_slope * (key0 + (float)(nt * 8 + 1));
            }
        }
        const bool per_score_mods = side == 0.f;
#else
        constexpr float row_shift[kMTiles][2] = {};
        constexpr bool per_score_mods = true;
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
            for (int nt = 0; nt < kSTiles; ++nt) acc_s[mt][nt][0] = acc_s[mt][nt][1] = acc_s[mt][nt][2] = acc_s[mt][nt][3] = 0.f;
#endif

        cp_async_wait<0>();
        __syncthreads();  // K[n] has landed; every warp is done reading V[n+1]
        load_tile_fast<D, BN, kThreads>(sV, v, p.v_row_stride, n_block * BN, seqlen_k, p.head_dim, tid);
        cp_async_commit();

        // S = Q K^T on tensor cores, 64 columns of d at a time. The four k-steps inside a chunk are unrolled,
        // so each picks its per-lane offset statically; FA_ROLL_QK keeps the chunk loop rolled (less register
        // pressure at large d), otherwise it is unrolled too.
#if FA_ROLL_QK
#pragma unroll 1
#else
#pragma unroll
#endif
        for (int chunk = 0; chunk < D / 64; ++chunk) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                u32 qa[kMTiles][4];
#pragma unroll
                for (int mt = 0; mt < kMTiles; ++mt)
                    ldmatrix_x4(qa[mt], q_off[j] + mt * 16 * kRowBytes + chunk * 128);
#pragma unroll
                for (int np = 0; np < kSTiles / 2; ++np) {
                    u32 kb[4];
                    ldmatrix_x4(kb, k_off[j] + np * 16 * kRowBytes + chunk * 128);
#pragma unroll
                    for (int mt = 0; mt < kMTiles; ++mt) {
                        E::mma(acc_s[mt][2 * np], qa[mt], kb);
                        E::mma(acc_s[mt][2 * np + 1], qa[mt], kb + 2);
                    }
                }
            }
        }

        // Softcap and ALiBi (compile-time variants) on every score, before the mask (tanh(-inf) would not stay -inf).
#if FA_SOFTCAP || FA_ALIBI
        if (per_score_mods)
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                // diagonal - col for the thread's first column of the block; the n-tile adds a constant.
                const float distance0 = (float)(row0 + warp_row0 + mt * 16 + g + (i >= 2 ? 8 : 0) + offset - col0 - 2 * t - (i & 1));
                float unused_dtanh;
#pragma unroll
                for (int nt = 0; nt < kSTiles; ++nt)
                    acc_s[mt][nt][i] = modify_score(acc_s[mt][nt][i], p.softcap_pre, raw_slope, distance0 - (float)(nt * 8), unused_dtanh);
            }
#endif

        // Element masks (-inf) only on blocks that cross the seqlen_k tail or a window edge; the rest of the
        // blocks skip this pass entirely.
        const bool need_mask = col0 + BN > seqlen_k
            || (p.window_right >= 0 && col0 + BN - 1 > row0 + offset + p.window_right)
            || (p.window_left >= 0 && col0 < last_row + offset - p.window_left);
        if (need_mask) {
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int diagonal = row0 + warp_row0 + mt * 16 + g + (i >= 2 ? 8 : 0) + offset;
                    const int visible_end = p.window_right >= 0 ? min(seqlen_k, diagonal + p.window_right + 1) : seqlen_k;
                    const int visible_begin = p.window_left >= 0 ? diagonal - p.window_left : 0;
#pragma unroll
                    for (int nt = 0; nt < kSTiles; ++nt) {
                        const int col = col0 + nt * 8 + 2 * t + (i & 1);
                        acc_s[mt][nt][i] = (col < visible_begin || col >= visible_end) ? -FA_INF : acc_s[mt][nt][i];
                    }
                }
        }

        // Online softmax on raw scores (the scale is positive, so the max commutes with it): with c = scale*log2(e),
        // m_new = max(m, rowmax S), base = fl(m_new c); P = exp2(S c - base) as one FFMA + ex2;
        // O and l are rescaled by exp2(base_old - base).
#pragma unroll
        for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
            for (int half = 0; half < 2; ++half) {
                // The accumulators hold score + row_shift (0 unless the ALiBi fold is on); row_max is in score units.
                const float shift = row_shift[mt][half];
                float m = -FA_INF;
#pragma unroll
                for (int nt = 0; nt < kSTiles; ++nt) m = fmaxf(m, fmaxf(acc_s[mt][nt][2 * half], acc_s[mt][nt][2 * half + 1]));
                m = fmaxf(row_max[mt][half], quad_max(m) - shift);
                // A row with nothing visible so far keeps max -inf; use 0 as the base so exp2 gives 0, not NaN.
                // Every block's P is relative to its own base = fl(m * c), and the rescale goes from the previous base to
                // this one (both rounded alike: an FMA-contracted m_old * c - base would mix in m_old * c's rounding, a
                // per-block error of |m c| 2^-25 that no later step cancels).
                const float base = m == -FA_INF ? 0.f : __fmul_rn(m, p.scale_log2);
                const float rescale = fast_exp2(__fmul_rn(row_max[mt][half], p.scale_log2) - base);
#if FA_ALIBI_FOLD
                const float exp_bias = -fmaf(shift, p.scale_log2, base);
#else
                const float exp_bias = -base;
#endif
                row_max[mt][half] = m;
                float sum = 0.f;
#pragma unroll
                for (int nt = 0; nt < kSTiles; ++nt) {
                    float p0 = fast_exp2(fmaf(acc_s[mt][nt][2 * half], p.scale_log2, exp_bias));
                    float p1 = fast_exp2(fmaf(acc_s[mt][nt][2 * half + 1], p.scale_log2, exp_bias));
                    acc_s[mt][nt][2 * half] = p0;
                    acc_s[mt][nt][2 * half + 1] = p1;
                    sum += p0 + p1;
                }
                row_sum[mt][half] = row_sum[mt][half] * rescale + sum;  // per-thread partial; reduced over the quad at the end
#if FA_DROPOUT
                // Dropout on P for the PV product only (the normaliser l uses P before dropout). This thread's two columns
                // of an n8 tile are one column group of four: one Philox call per tile row gives both words.
                {
                    const int row = row0 + warp_row0 + mt * 16 + g + 8 * half;
                    const unsigned int stream = (unsigned int)(batch * p.heads_q + head);
#pragma unroll
                    for (int nt = 0; nt < kSTiles; ++nt) {
                        const int col = col0 + nt * 8 + 2 * t;
                        const PhiloxWords w = dropout_words(p.dropout, stream, row, col);
                        acc_s[mt][nt][2 * half] *= keep_factor(p.dropout, word_of(w, col));
                        acc_s[mt][nt][2 * half + 1] *= keep_factor(p.dropout, word_of(w, col + 1));
                    }
                }
#endif
#pragma unroll
                for (int nt = 0; nt < kOTiles; ++nt) {
                    acc_o[mt][nt][2 * half] *= rescale;
                    acc_o[mt][nt][2 * half + 1] *= rescale;
                }
            }

        cp_async_wait<0>();
        __syncthreads();  // V[n] has landed; every warp is done reading K[n]
        if (n_block > n_block_min) {
            load_tile_fast<D, BN, kThreads>(sK, k, p.k_row_stride, (n_block - 1) * BN, seqlen_k, p.head_dim, tid);
            cp_async_commit();
        }

        // O += P V: the S accumulators of two adjacent n8 tiles are exactly an A fragment, so P stays in registers.
#pragma unroll
        for (int kk = 0; kk < BN / 16; ++kk) {
            u32 pa[kMTiles][4];
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt) {
                pa[mt][0] = E::pack(acc_s[mt][2 * kk][0], acc_s[mt][2 * kk][1]);
                pa[mt][1] = E::pack(acc_s[mt][2 * kk][2], acc_s[mt][2 * kk][3]);
                pa[mt][2] = E::pack(acc_s[mt][2 * kk + 1][0], acc_s[mt][2 * kk + 1][1]);
                pa[mt][3] = E::pack(acc_s[mt][2 * kk + 1][2], acc_s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int dp = 0; dp < kOTiles / 2; ++dp) {
                u32 vb[4];
                ldmatrix_x4_trans(vb, v_off[dp & 3] + kk * 16 * kRowBytes + (dp >> 2) * 128);
#pragma unroll
                for (int mt = 0; mt < kMTiles; ++mt) {
                    E::mma(acc_o[mt][2 * dp], pa[mt], vb);
                    E::mma(acc_o[mt][2 * dp + 1], pa[mt], vb + 2);
                }
            }
        }
    }

    // Epilogue: O / l and LSE = scale * max + ln(l). A row that saw no key writes O = 0 and LSE = +inf.
    // O goes through shared memory (each warp reuses its own rows of the Q tile, which only it reads), so the
    // global writes are whole 16-byte chunks instead of scattered 4-byte pairs.
#pragma unroll
    for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int tile_row = warp_row0 + mt * 16 + g + 8 * half;
            const float sum = quad_sum(row_sum[mt][half]);
            const bool empty = !(sum > 0.f);
            const float inv = empty ? 0.f : 1.f / sum;
#pragma unroll
            for (int nt = 0; nt < kOTiles; ++nt) {
                const u32 packed = E::pack(acc_o[mt][nt][2 * half] * inv, acc_o[mt][nt][2 * half + 1] * inv);
                asm volatile("st.shared.u32 [%0], %1;" :: "r"(sQ + swizzle<D>(tile_row, nt) + 4 * t), "r"(packed));
            }
            const int row = row0 + tile_row;
            // l sums 2^(S c - base) with base = fl(m c): the LSE is base ln 2 + ln l (m * scale would be off by base's rounding).
            if (t == 0 && row < seqlen_q)
                lse[row] = empty ? FA_INF : fmaf(__fmul_rn(row_max[mt][half], p.scale_log2), 0.69314718055994531f, __logf(sum));
        }
    __syncwarp();
    constexpr int kChunks = D / 8;
#pragma unroll
    for (int i = 0; i < kWarpRows * kChunks / 32; ++i) {
        const int idx = lane + i * 32;
        const int tile_row = warp_row0 + idx / kChunks, c = idx % kChunks;
        const int row = row0 + tile_row;
        if (row < seqlen_q && c * 8 < p.head_dim) {
            u32 x, y, z, w;
            asm volatile("ld.shared.v4.u32 {%0,%1,%2,%3}, [%4];" : "=r"(x), "=r"(y), "=r"(z), "=r"(w) : "r"(sQ + swizzle<D>(tile_row, c)));
            u16* dst = o + (long long)row * p.o_row_stride + c * 8;
            asm volatile("st.global.v4.u32 [%0], {%1,%2,%3,%4};" :: "l"(dst), "r"(x), "r"(y), "r"(z), "r"(w));
        }
    }
}

#if FA_BF16
typedef Bf16 FaElement;
#else
typedef Fp16 FaElement;
#endif

extern "C" __global__ void __launch_bounds__(FA_WARPS * 32) flash_fwd_kernel(const FlashFwdParams p) {
    flash_fwd_block<FA_HEAD_DIM, FA_BLOCK_M, FA_BLOCK_N, FA_WARPS, FaElement>(p);
}
