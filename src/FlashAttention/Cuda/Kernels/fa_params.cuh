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
    long long q_batch_stride, q_row_stride, q_head_stride;   // in elements; headdim is contiguous
    long long k_batch_stride, k_row_stride, k_head_stride;
    long long v_batch_stride, v_row_stride, v_head_stride;
    long long o_batch_stride, o_row_stride, o_head_stride;
    long long lse_batch_stride, lse_head_stride;             // lse row stride is 1
    int batch, heads_q, heads_kv, head_dim;
    int seqlen_q, seqlen_k;                                   // max lengths when varlen
    int window_left, window_right;                            // -1 = unlimited; causal sets right = 0
    float scale_log2;                                          // softmax_scale * log2(e)
    float scale;                                               // softmax_scale
    DropoutParams dropout;                                     // used when compiled with FA_DROPOUT
};
