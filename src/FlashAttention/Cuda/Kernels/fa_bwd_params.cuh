// Backward kernel parameters. The C# struct FlashBackwardParams mirrors this layout field for field
// (8-byte fields first, then 4-byte ones).
#pragma once
#include "fa_dropout.cuh"

struct FlashBwdParams {
    const void* q; const void* k; const void* v; const void* o; const void* dout;
    void* dq; void* dk; void* dv;
    const float* lse;         // (batch, heads_q, seqlen_q): the forward's log-sum-exp
    float* delta;             // (batch, heads_q, seqlen_q): D = rowsum(dO * O), written by the pre-pass
    float* dq_accum;          // splits x (batch, seqlen_q, heads_q, head_dim) fp32
    long long q_batch_stride, q_row_stride, q_head_stride;
    long long k_batch_stride, k_row_stride, k_head_stride;
    long long v_batch_stride, v_row_stride, v_head_stride;
    long long o_batch_stride, o_row_stride, o_head_stride;
    long long do_batch_stride, do_row_stride, do_head_stride;
    long long dq_batch_stride, dq_row_stride, dq_head_stride;
    long long dk_batch_stride, dk_row_stride, dk_head_stride;
    long long dv_batch_stride, dv_row_stride, dv_head_stride;
    long long lse_batch_stride, lse_head_stride;
    long long dq_accum_split_stride;   // elements between the splits' dQ buffers
    int batch, heads_q, heads_kv, head_dim;
    int seqlen_q, seqlen_k;
    int window_left, window_right;
    int splits;                        // deterministic: CTAs per (kv head, batch), each owning one dQ buffer
    float scale, scale_log2;
    DropoutParams dropout;             // used when compiled with FA_DROPOUT
};
