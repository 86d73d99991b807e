// Backward kernel parameters. The C# struct FlashBackwardParams mirrors this layout field for field
// (8-byte fields first, then 4-byte ones).
#pragma once
#include "fa_dropout.cuh"

struct FlashBwdParams {
    const void* q; const void* k; const void* v; const void* o; const void* dout;
    void* dq; void* dk; void* dv;
    const float* lse;         // (batch, heads_q, seqlen_q): the forward's log-sum-exp
    float* delta;             // (batch, heads_q, seqlen_q): D = rowsum(dO * O), written by the pre-pass
    float* dq_accum;          // splits x (batch, seqlen_q, heads_q, head_dim) fp32; varlen: splits x (total_q, heads_q, head_dim)
    const int* cu_seqlens_q;  // null unless varlen: batch + 1 offsets into the token dimension
    const int* cu_seqlens_k;
    const float* alibi_slopes;  // null unless compiled with FA_ALIBI: slope of (b, h) at b * alibi_batch_stride + h
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
    long long dq_accum_batch_stride;   // elements between sequences' dQ rows (0 when varlen: rows are token rows)
    long long alibi_batch_stride;      // 0 for per-head slopes
    int batch, heads_q, heads_kv, head_dim;
    int seqlen_q, seqlen_k;            // max lengths when varlen
    int total_q, total_k;              // varlen: token rows of q and k (offsets are clamped to them)
    int window_left, window_right;
    int splits;                        // deterministic: CTAs per (kv head, batch), each owning one dQ buffer
    float scale;                       // softmax_scale: enters dK and dQ
    float scale_log2;                  // s_eff * log2(e): recomputes P (s_eff = softmax_scale, or the cap with softcap)
    float softcap_pre;                 // softmax_scale / cap (FA_SOFTCAP)
    float alibi_factor;                // 1 / s_eff (FA_ALIBI)
    DropoutParams dropout;             // used when compiled with FA_DROPOUT
};
