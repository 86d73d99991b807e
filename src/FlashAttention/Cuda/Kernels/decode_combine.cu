// Merges the split-KV partials of flash_decode.cu: per output row (batch, head, query), O = sum_s w_s O_s / sum_s w_s with
// w_s = exp(lse_s - max lse) and LSE = max + log(sum w_s). A split that saw no key has lse = -inf (w_s = 0) and O_s = 0.
// One thread block per row, one thread per column: the weights go through shared memory once, then every thread sums its
// column over the splits with the loads unrolled, so the few microseconds this takes are not a chain of dependent loads.
// Variant: FA_BF16.
#include "fa_elements.cuh"

#if FA_BF16
typedef BfloatElem Elem;
#else
typedef HalfElem Elem;
#endif

struct DecodeCombineParams {
    const float* o_partial;      // (splits, batch, heads_q, seqlen_q, head_dim)
    const float* lse_partial;    // (splits, batch, heads_q, seqlen_q)
    void* o;
    float* lse;                  // (batch, heads_q, seqlen_q) or null
    long long o_batch_stride, o_row_stride, o_head_stride;
    long long lse_batch_stride, lse_head_stride;
    int batch, heads_q, seqlen_q, head_dim, num_splits;
};

constexpr int kMaxSplits = 128;

extern "C" __global__ void decode_combine_kernel(const DecodeCombineParams p) {
    __shared__ float weight[kMaxSplits];
    __shared__ float row_max, row_total;
    const long long rows = (long long)p.batch * p.heads_q * p.seqlen_q, row = blockIdx.x;
    const int tid = threadIdx.x;
    if (tid < p.num_splits) weight[tid] = p.lse_partial[tid * rows + row];
    __syncthreads();
    if (tid < 32) {
        float m = -FA_INF;
        for (int s = tid; s < p.num_splits; s += 32) m = fmaxf(m, weight[s]);
        for (int k = 16; k > 0; k /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, k));
        float total = 0.f;
        if (m != -FA_INF)
            for (int s = tid; s < p.num_splits; s += 32) total += __expf(weight[s] - m);
        for (int k = 16; k > 0; k /= 2) total += __shfl_xor_sync(0xffffffffu, total, k);
        __syncwarp();
        for (int s = tid; s < p.num_splits; s += 32) weight[s] = m == -FA_INF ? 0.f : __expf(weight[s] - m) / total;
        if (tid == 0) { row_max = m; row_total = total; }
    }
    __syncthreads();

    const int qi = (int)(row % p.seqlen_q), head = (int)(row / p.seqlen_q % p.heads_q), b = (int)(row / ((long long)p.seqlen_q * p.heads_q));
    u16* out = (u16*)p.o + b * p.o_batch_stride + qi * p.o_row_stride + head * p.o_head_stride;
    const long long split_stride = rows * p.head_dim;
    for (int d = tid; d < p.head_dim; d += blockDim.x) {
        const float* column = p.o_partial + row * p.head_dim + d;
        float o = 0.f;
#pragma unroll 8
        for (int s = 0; s < p.num_splits; ++s) o += weight[s] * column[s * split_stride];
        out[d] = Elem::from_float(o);
    }
    if (tid == 0 && p.lse != nullptr)
        p.lse[b * p.lse_batch_stride + head * p.lse_head_stride + qi] = !(row_total > 0.f) ? FA_INF : row_max + __logf(row_total);
}
