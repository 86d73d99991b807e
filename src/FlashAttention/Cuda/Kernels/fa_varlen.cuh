// One sequence of the batch: where its query and key rows start in the token dimension and how many there are.
// Fixed-length batches start at 0 (the batch stride selects the sequence); varlen batches read the cumulative offsets.
#pragma once

struct SequenceRange {
    int q_start, k_start;     // first token row (0 unless varlen)
    int seqlen_q, seqlen_k;   // this sequence's lengths
};

// Works for the forward and backward parameter structs. Varlen offsets come from the caller's device memory unread by
// the host (as flash-attn does), so they are clamped to [0, total] and the lengths to the given maxima: bad offsets give
// wrong numbers, never an out-of-bounds access.
template <typename Params>
__device__ __forceinline__ SequenceRange sequence_range(const Params& p, int batch) {
    SequenceRange r{0, 0, p.seqlen_q, p.seqlen_k};
    if (p.cu_seqlens_q != nullptr) {
        r.q_start = min(max(p.cu_seqlens_q[batch], 0), p.total_q);
        r.seqlen_q = max(0, min(p.cu_seqlens_q[batch + 1] - r.q_start, min(p.seqlen_q, p.total_q - r.q_start)));
        r.k_start = min(max(p.cu_seqlens_k[batch], 0), p.total_k);
        r.seqlen_k = max(0, min(p.cu_seqlens_k[batch + 1] - r.k_start, min(p.seqlen_k, p.total_k - r.k_start)));
    }
    return r;
}
