// Attention probabilities for AttentionOptions.ReturnProbabilities, the GPU twin of Cpu/CpuProbabilities.cs:
// P[b, h, i, j] = exp(logit(i, j) - LSE[b, h, i]) from the LSE the forward kernel wrote (so P shows exactly what
// forward normalised by), fp32, dense (batch, heads_q, seqlen_q, seqlen_k). Hidden entries are +0; entries that
// dropout drops are negated (flash-attn's convention; not scaled by 1/(1-p)).
//
// A testing aid for small shapes (O(seqlen^2) memory), so it stays simple: one thread per element, grid-stride,
// the q.k dot product accumulated in fp32 from the 16-bit inputs. Any head dim, any strides (elements are read
// one by one, so no 16-byte alignment is needed). Entry points: flash_probs_fp16, flash_probs_bf16.
#include "fa_elements.cuh"
#include "fa_dropout.cuh"

// Mirrors FlashProbabilitiesParams in Cuda/FlashProbabilitiesParams.cs: 8-byte fields first.
struct FlashProbsParams {
    const void* q; const void* k;
    const float* lse;
    const float* alibi_slopes;                               // null = no ALiBi; slope of (b, h) at b * alibi_batch_stride + h
    float* probs;                                            // dense (batch, heads_q, seqlen_q, seqlen_k)
    long long q_batch_stride, q_row_stride, q_head_stride;   // in elements; headdim is contiguous
    long long k_batch_stride, k_row_stride, k_head_stride;
    long long lse_batch_stride, lse_head_stride;             // lse row stride is 1
    long long alibi_batch_stride;                            // 0 for per-head slopes
    int batch, heads_q, heads_kv, head_dim;
    int seqlen_q, seqlen_k;
    int window_left, window_right;                           // -1 = unlimited; causal sets right = 0
    float scale;                                             // softmax_scale
    float softcap;                                           // 0 = off
    DropoutParams dropout;
};

template <typename E>
__device__ __forceinline__ void attention_probabilities(const FlashProbsParams& p) {
    const long long total = (long long)p.batch * p.heads_q * p.seqlen_q * p.seqlen_k;
    const int group = p.heads_q / p.heads_kv;
    const long long offset = (long long)p.seqlen_k - p.seqlen_q;   // bottom-right aligned diagonal
    for (long long idx = blockIdx.x * (long long)blockDim.x + threadIdx.x; idx < total; idx += (long long)gridDim.x * blockDim.x) {
        // idx walks the output densely, col fastest, so the stores coalesce.
        const int col = (int)(idx % p.seqlen_k);
        long long rest = idx / p.seqlen_k;
        const int row = (int)(rest % p.seqlen_q);
        rest /= p.seqlen_q;
        const int head = (int)(rest % p.heads_q);
        const int batch = (int)(rest / p.heads_q);

        // The visibility rule of AttentionSettings.IsVisible and the forward kernel.
        const long long diagonal = row + offset;
        const bool visible = (p.window_left < 0 || col >= diagonal - p.window_left)
                          && (p.window_right < 0 || col <= diagonal + p.window_right);
        float value = 0.f;
        if (visible) {
            const u16* q = (const u16*)p.q + batch * p.q_batch_stride + row * p.q_row_stride + head * p.q_head_stride;
            const u16* k = (const u16*)p.k + batch * p.k_batch_stride + col * p.k_row_stride + (head / group) * p.k_head_stride;
            float score = 0.f;
            for (int c = 0; c < p.head_dim; ++c) score += E::to_float(q[c]) * E::to_float(k[c]);

            // __fmul_rn keeps each product rounded on its own (no FMA contraction), as the CPU path computes it.
            float logit = p.softcap > 0.f ? p.softcap * tanhf(__fmul_rn(score, p.scale) / p.softcap) : __fmul_rn(score, p.scale);
            if (p.alibi_slopes != nullptr) {
                int distance = (int)(diagonal - col);
                if (distance < 0) distance = -distance;
                logit -= __fmul_rn(p.alibi_slopes[batch * p.alibi_batch_stride + head], (float)distance);
            }
            const float row_lse = p.lse[batch * p.lse_batch_stride + head * p.lse_head_stride + row];
            value = row_lse == FA_INF ? 0.f : expf(logit - row_lse);   // a row that sees no key has LSE +inf
            if (p.dropout.enabled) {
                const PhiloxWords words = dropout_words(p.dropout, (unsigned int)(batch * p.heads_q + head), row, col);
                if (word_of(words, col) < p.dropout.keep_threshold) value = -value;
            }
        }
        p.probs[idx] = value;
    }
}

extern "C" __global__ void __launch_bounds__(256) flash_probs_fp16(const FlashProbsParams p) { attention_probabilities<HalfElem>(p); }
extern "C" __global__ void __launch_bounds__(256) flash_probs_bf16(const FlashProbsParams p) { attention_probabilities<BfloatElem>(p); }
