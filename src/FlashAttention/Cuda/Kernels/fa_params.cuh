// Kernel parameters. The C# struct FlashForwardParams mirrors this layout field for field:
// all 8-byte fields first, then the 4-byte ones, so both sides agree on padding.
#pragma once
#include "fa_dropout.cuh"

struct FlashFwdParams {
    const void* q; const void* k; const void* v;
    void* o;
    float* lse;
    const int* cu_seqlens_q;   // null unless varlen: batch + 1 offsets into the token dimension
    const int* cu_seqlens_k;
    const float* alibi_slopes;  // null unless compiled with FA_ALIBI: slope of (b, h) at b * alibi_batch_stride + h
    long long q_batch_stride, q_row_stride, q_head_stride;   // in elements; headdim is contiguous
    long long k_batch_stride, k_row_stride, k_head_stride;
    long long v_batch_stride, v_row_stride, v_head_stride;
    long long o_batch_stride, o_row_stride, o_head_stride;
    long long lse_batch_stride, lse_head_stride;             // lse row stride is 1
    long long alibi_batch_stride;                            // 0 for per-head slopes
    int batch, heads_q, heads_kv, head_dim;
    int seqlen_q, seqlen_k;                                   // max lengths when varlen
    int total_q, total_k;                                     // varlen: token rows of q and k (offsets are clamped to them)
    int window_left, window_right;                            // -1 = unlimited; causal sets right = 0
    float scale_log2;                                          // s_eff * log2(e): s_eff = softmax_scale, or the cap with softcap
    float scale;                                               // s_eff (fa_score_mods.cuh)
    float softcap_pre;                                         // softmax_scale / cap (FA_SOFTCAP)
    float alibi_factor;                                        // 1 / s_eff (FA_ALIBI)
    DropoutParams dropout;                                     // used when compiled with FA_DROPOUT
};
