// Softmax backward of the unfused attention baseline (Cuda/Unfused/UnfusedAttention.cs), PyTorch's
// _softmax_backward_data on materialised matrices: given the forward's probabilities P and dP = dO V^T (both dense
// (batch, heads, seqlen_q, seqlen_k) matrices of 16-bit elements, from cuBLAS), it writes, in place over dP,
//     dS = P * (dP - delta),   delta = rowsum(P * dP),
// rounded to the element type. The softmax scale is not applied here: it rides on the alpha of the GEMMs that
// consume dS (dQ = scale * dS K, dK = scale * dS^T Q), as the forward's rides on S = scale * Q K^T.
//
// One row per warp (unfused_softmax_bwd_warp_*, short rows) or per 256-thread block (unfused_softmax_bwd_block_*,
// long rows); two passes over the row (delta, then dS), all arithmetic in fp32. Masked columns have P = 0 (the
// forward writes them so), hence dS = 0 there, written as an exact 0 without reading dP (a masked dP is never
// needed: 0 * dP would also turn an infinite dP into NaN). Chunks whose eight P are all 0 (the masked tail of a
// causal row) skip dP's read in both passes.
#include "fa_elements.cuh"

// Mirrors UnfusedSoftmaxBackwardParams in Cuda/Unfused/UnfusedSoftmaxBackwardParams.cs: 8-byte fields first.
struct UnfusedSoftmaxBwdParams {
    const void* p;          // probabilities, row r at p + r * seqlen_k (read only: a later backward may reuse them)
    void* ds;               // dP in, dS out, same layout
    long long rows;         // batch * heads * seqlen_q
    int seqlen_k;
};



__device__ __forceinline__ bool all_zero(const U16x8& v) {
    // +0 and -0 both count as zero (P is never negative, but a -0 would still mean "no probability").
    return ((v.w[0] | v.w[1] | v.w[2] | v.w[3]) & 0x7fff7fffu) == 0u;
}

// The row sum over the kThreads threads that share the row; every thread gets the result.
template <int kThreads>
__device__ __forceinline__ float reduce_sum(float x, float* shared) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
    if constexpr (kThreads > 32) {
        constexpr int kWarps = kThreads / 32;
        __syncthreads();  // the previous row's readers are done with `shared`
        if (threadIdx.x % 32 == 0) shared[threadIdx.x / 32] = x;
        __syncthreads();
        x = shared[0];
#pragma unroll
        for (int w = 1; w < kWarps; ++w) x += shared[w];
    }
    return x;
}

// dS of one row by the kThreads threads with index t in [0, kThreads).
template <typename E, int kThreads>
__device__ __forceinline__ void softmax_bwd_row(const UnfusedSoftmaxBwdParams& prm, long long row, int t, float* shared) {
    const int sk = prm.seqlen_k;
    const u16* p = (const u16*)prm.p + row * sk;
    u16* d = (u16*)prm.ds + row * sk;
    const bool vector = sk % 8 == 0;

    // Pass 1: delta = sum_j P_j dP_j.
    float delta = 0.f;
    if (vector) {
        for (int c = t; c < sk / 8; c += kThreads) {
            const U16x8 pc = *(const U16x8*)(p + 8 * c);
            if (all_zero(pc)) continue;
            const U16x8 dc = *(const U16x8*)(d + 8 * c);
#pragma unroll
            for (int e = 0; e < 8; ++e) delta += E::to_float(lane(pc, e)) * E::to_float(lane(dc, e));
        }
    } else {
        for (int col = t; col < sk; col += kThreads) {
            const float pr = E::to_float(p[col]);
            if (pr != 0.f) delta += pr * E::to_float(d[col]);
        }
    }
    delta = reduce_sum<kThreads>(delta, shared);

    // Pass 2: dS = P * (dP - delta), exactly 0 where P is 0.
    if (vector) {
        for (int c = t; c < sk / 8; c += kThreads) {
            const U16x8 pc = *(const U16x8*)(p + 8 * c);
            U16x8 out = {{0u, 0u, 0u, 0u}};
            if (!all_zero(pc)) {
                const U16x8 dc = *(const U16x8*)(d + 8 * c);
                float ds[8];
#pragma unroll
                for (int e = 0; e < 8; ++e) {
                    const float pr = E::to_float(lane(pc, e));
                    ds[e] = pr != 0.f ? pr * (E::to_float(lane(dc, e)) - delta) : 0.f;
                }
#pragma unroll
                for (int w = 0; w < 4; ++w) out.w[w] = E::pack(ds[2 * w], ds[2 * w + 1]);
            }
            *(U16x8*)(d + 8 * c) = out;
        }
    } else {
        for (int col = t; col < sk; col += kThreads) {
            const float pr = E::to_float(p[col]);
            d[col] = pr != 0.f ? E::from_float(pr * (E::to_float(d[col]) - delta)) : (u16)0;
        }
    }
}

// Warp per row: blockDim.x = 128 (4 rows per block), grid-stride over rows.
template <typename E>
__device__ __forceinline__ void softmax_bwd_warps(const UnfusedSoftmaxBwdParams& prm) {
    const int warps = blockDim.x / 32;
    for (long long row = (long long)blockIdx.x * warps + threadIdx.x / 32; row < prm.rows; row += (long long)gridDim.x * warps)
        softmax_bwd_row<E, 32>(prm, row, threadIdx.x % 32, nullptr);
}

// Block per row: blockDim.x = 256, grid-stride over rows (the loop condition is uniform across the block).
template <typename E>
__device__ __forceinline__ void softmax_bwd_blocks(const UnfusedSoftmaxBwdParams& prm) {
    __shared__ float shared[256 / 32];
    for (long long row = blockIdx.x; row < prm.rows; row += gridDim.x)
        softmax_bwd_row<E, 256>(prm, row, threadIdx.x, shared);
}

extern "C" __global__ void __launch_bounds__(128) unfused_softmax_bwd_warp_fp16(const UnfusedSoftmaxBwdParams p) { softmax_bwd_warps<HalfElem>(p); }
extern "C" __global__ void __launch_bounds__(128) unfused_softmax_bwd_warp_bf16(const UnfusedSoftmaxBwdParams p) { softmax_bwd_warps<BfloatElem>(p); }
extern "C" __global__ void __launch_bounds__(256) unfused_softmax_bwd_block_fp16(const UnfusedSoftmaxBwdParams p) { softmax_bwd_blocks<HalfElem>(p); }
extern "C" __global__ void __launch_bounds__(256) unfused_softmax_bwd_block_bf16(const UnfusedSoftmaxBwdParams p) { softmax_bwd_blocks<BfloatElem>(p); }
