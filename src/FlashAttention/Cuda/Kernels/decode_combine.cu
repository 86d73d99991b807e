// Merges the split-KV partials of flash_decode.cu: per output row (batch, head, query), O = sum_s w_s O_s / sum_s w_s with
// w_s = exp(lse_s - max lse) and LSE = max + log(sum w_s). Splits that saw no key carry lse = -inf and are skipped (their
// O_s is never read). One warp per row; the partials are tiny next to the cache, so this is launch-bound.
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

extern "C" __global__ void decode_combine_kernel(const DecodeCombineParams p) {
    const int lane = threadIdx.x % 32;
    const long long rows = (long long)p.batch * p.heads_q * p.seqlen_q;
    const long long row = blockIdx.x * (long long)(blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    float m = -FA_INF;
    for (int s = lane; s < p.num_splits; s += 32) m = fmaxf(m, p.lse_partial[s * rows + row]);
    for (int k = 16; k > 0; k /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, k));
    float total = 0.f;
    if (m != -FA_INF)
        for (int s = lane; s < p.num_splits; s += 32) total += __expf(p.lse_partial[s * rows + row] - m);
    for (int k = 16; k > 0; k /= 2) total += __shfl_xor_sync(0xffffffffu, total, k);

    const int qi = (int)(row % p.seqlen_q), head = (int)(row / p.seqlen_q % p.heads_q), b = (int)(row / ((long long)p.seqlen_q * p.heads_q));
    u16* out = (u16*)p.o + b * p.o_batch_stride + qi * p.o_row_stride + head * p.o_head_stride;
    for (int d = lane; d < p.head_dim; d += 32) {
        float o = 0.f;
        if (m != -FA_INF)
            for (int s = 0; s < p.num_splits; ++s) {
                const float l = p.lse_partial[s * rows + row];
                if (l != -FA_INF) o += __expf(l - m) * p.o_partial[(s * rows + row) * p.head_dim + d];
            }
        out[d] = Elem::from_float(m == -FA_INF ? 0.f : o / total);
    }
    if (lane == 0 && p.lse != nullptr)
        p.lse[b * p.lse_batch_stride + head * p.lse_head_stride + qi] = m == -FA_INF ? FA_INF : m + __logf(total);
}
