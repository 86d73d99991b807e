// Row softmax of the unfused attention baseline (Cuda/Unfused/UnfusedAttention.cs), the "native attention" that
// FlashAttention is compared with: S = scale * Q K^T comes from a cuBLAS GEMM as a dense (batch, heads, seqlen_q,
// seqlen_k) matrix of 16-bit elements; this kernel turns each row into P = softmax(S) in place (same dtype, as
// PyTorch does) and writes the row's log-sum-exp; a second GEMM then computes O = P V.
//
// One row per warp (unfused_softmax_warp_*, short rows) or per 256-thread block (unfused_softmax_block_*, long
// rows). Two passes over the row, both from L1/L2 in practice:
//   pass 1: each thread keeps a running (max, sum of exp(x - max)) over its elements (online softmax), rescaling
//           the sum when the max grows; the partial pairs are merged across the warp (shuffles) and the block
//           (shared memory);
//   pass 2: P = exp(x - max) / sum, rounded to the element type; masked columns are written as 0.
// Numerical safety: all arithmetic in fp32; exp(x - max) is exp2 with log2(e) folded in; a pair whose max is
// still -inf (no visible element yet) has sum 0 and is never rescaled (-inf - -inf would be NaN). A row that
// sees no key writes P = 0 and LSE = +inf, so backward's exp(S - LSE) is 0 there.
// Columns are visited only inside the row's visible range [begin, end) (bottom-right aligned causal / window
// masks), so a masked-out tail costs no reads.
#include "fa_elements.cuh"

// Mirrors UnfusedSoftmaxParams in Cuda/Unfused/UnfusedSoftmaxParams.cs: 8-byte fields first.
struct UnfusedSoftmaxParams {
    void* s;                                    // scores in, probabilities out; row r at s + r * seqlen_k
    float* lse;                                 // (batch, heads, seqlen_q) view, row stride 1
    long long lse_batch_stride, lse_head_stride;
    long long rows;                             // batch * heads * seqlen_q
    int heads, seqlen_q, seqlen_k;
    int window_left, window_right;              // -1 = unlimited; causal sets right = 0
};

#define UF_LOG2E 1.4426950408889634f


// Merges the softmax state (m2, l2) into (m, l). Guards the all -inf case (see the header comment).
__device__ __forceinline__ void merge(float& m, float& l, float m2, float l2) {
    const float mn = fmaxf(m, m2);
    if (mn == -FA_INF) return;
    l = l * fast_exp2((m - mn) * UF_LOG2E) + l2 * fast_exp2((m2 - mn) * UF_LOG2E);
    m = mn;
}

// Adds up to eight values (masked ones are -inf) to the running state with one rescale.
template <int N>
__device__ __forceinline__ void accumulate(float& m, float& l, const float* x) {
    float mx = x[0];
#pragma unroll
    for (int e = 1; e < N; ++e) mx = fmaxf(mx, x[e]);
    if (mx == -FA_INF) return;
    const float mn = fmaxf(m, mx);
    float sum = 0.f;
#pragma unroll
    for (int e = 0; e < N; ++e) sum += fast_exp2((x[e] - mn) * UF_LOG2E);
    l = l * fast_exp2((m - mn) * UF_LOG2E) + sum;
    m = mn;
}

// The row's (max, sum) over the kThreads threads that share it; every thread gets the result.
template <int kThreads>
__device__ __forceinline__ void reduce_state(float& m, float& l, float* shared) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) {
        float m2 = __shfl_xor_sync(0xffffffffu, m, offset), l2 = __shfl_xor_sync(0xffffffffu, l, offset);
        merge(m, l, m2, l2);
    }
    if constexpr (kThreads > 32) {
        constexpr int kWarps = kThreads / 32;
        const int warp = threadIdx.x / 32;
        __syncthreads();  // the previous row's readers are done with `shared`
        if (threadIdx.x % 32 == 0) { shared[2 * warp] = m; shared[2 * warp + 1] = l; }
        __syncthreads();
        m = shared[0];
        l = shared[1];
#pragma unroll
        for (int w = 1; w < kWarps; ++w) merge(m, l, shared[2 * w], shared[2 * w + 1]);
    }
}

// Softmax of one row by the kThreads threads with index t in [0, kThreads).
template <typename E, int kThreads>
__device__ __forceinline__ void softmax_row(const UnfusedSoftmaxParams& p, long long row, int t, float* shared) {
    const int sk = p.seqlen_k;
    const int i = (int)(row % p.seqlen_q);
    const long long bh = row / p.seqlen_q;
    const int head = (int)(bh % p.heads), batch = (int)(bh / p.heads);
    u16* s = (u16*)p.s + row * sk;
    float* lse = p.lse + batch * p.lse_batch_stride + head * p.lse_head_stride + i;

    // Visible keys: j in [i + offset - left, i + offset + right] with offset = seqlen_k - seqlen_q.
    const long long diagonal = (long long)i + sk - p.seqlen_q;
    long long b0 = p.window_left >= 0 ? diagonal - p.window_left : 0;
    long long e0 = p.window_right >= 0 ? diagonal + p.window_right + 1 : sk;
    b0 = b0 < 0 ? 0 : b0 > sk ? sk : b0;
    e0 = e0 < b0 ? b0 : e0 > sk ? sk : e0;
    const int begin = (int)b0, end = (int)e0;
    const bool vector = sk % 8 == 0;

    // Pass 1: running max and sum of exp over the visible columns.
    float m = -FA_INF, l = 0.f;
    if (vector) {
        for (int c = begin / 8 + t; c < (end + 7) / 8; c += kThreads) {
            const U16x8 chunk = *(const U16x8*)(s + 8 * c);
            float x[8];
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                const int col = 8 * c + e;
                const u16 bits = (u16)(chunk.w[e / 2] >> (16 * (e % 2)));
                x[e] = col >= begin && col < end ? E::to_float(bits) : -FA_INF;
            }
            accumulate<8>(m, l, x);
        }
    } else {
        for (int col = begin + t; col < end; col += kThreads) {
            const float x = E::to_float(s[col]);
            accumulate<1>(m, l, &x);
        }
    }
    reduce_state<kThreads>(m, l, shared);

    if (t == 0) *lse = end > begin ? m + __logf(l) : FA_INF;
    const float inv = end > begin ? 1.f / l : 0.f;

    // Pass 2: P over the whole row, 0 outside the visible range (and everywhere when nothing is visible).
    if (vector) {
        for (int c = t; c < sk / 8; c += kThreads) {
            U16x8 out = {{0u, 0u, 0u, 0u}};
            if (8 * c + 8 > begin && 8 * c < end) {
                const U16x8 chunk = *(const U16x8*)(s + 8 * c);
                float pr[8];
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    const int col = 8 * c + e;
                    const u16 bits = (u16)(chunk.w[e / 2] >> (16 * (e % 2)));
                    pr[e] = col >= begin && col < end ? fast_exp2((E::to_float(bits) - m) * UF_LOG2E) * inv : 0.f;
                }
#pragma unroll
                for (int w = 0; w < 4; ++w) out.w[w] = E::pack(pr[2 * w], pr[2 * w + 1]);
            }
            *(U16x8*)(s + 8 * c) = out;
        }
    } else {
        for (int col = t; col < sk; col += kThreads) {
            const float pr = col >= begin && col < end ? fast_exp2((E::to_float(s[col]) - m) * UF_LOG2E) * inv : 0.f;
            s[col] = E::from_float(pr);
        }
    }
}

// Warp per row: blockDim.x = 128 (4 rows per block), grid-stride over rows.
template <typename E>
__device__ __forceinline__ void softmax_warps(const UnfusedSoftmaxParams& p) {
    const int warps = blockDim.x / 32;
    for (long long row = (long long)blockIdx.x * warps + threadIdx.x / 32; row < p.rows; row += (long long)gridDim.x * warps)
        softmax_row<E, 32>(p, row, threadIdx.x % 32, nullptr);
}

// Block per row: blockDim.x = 256, grid-stride over rows (the loop condition is uniform across the block).
template <typename E>
__device__ __forceinline__ void softmax_blocks(const UnfusedSoftmaxParams& p) {
    __shared__ float shared[2 * 256 / 32];
    for (long long row = blockIdx.x; row < p.rows; row += gridDim.x)
        softmax_row<E, 256>(p, row, threadIdx.x, shared);
}

extern "C" __global__ void __launch_bounds__(128) unfused_softmax_warp_fp16(const UnfusedSoftmaxParams p) { softmax_warps<HalfElem>(p); }
extern "C" __global__ void __launch_bounds__(128) unfused_softmax_warp_bf16(const UnfusedSoftmaxParams p) { softmax_warps<BfloatElem>(p); }
extern "C" __global__ void __launch_bounds__(256) unfused_softmax_block_fp16(const UnfusedSoftmaxParams p) { softmax_blocks<HalfElem>(p); }
extern "C" __global__ void __launch_bounds__(256) unfused_softmax_block_bf16(const UnfusedSoftmaxParams p) { softmax_blocks<BfloatElem>(p); }
