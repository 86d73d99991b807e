// Dropout keep mask, bit for bit the CPU path's specification (Dropout/DropoutMask.cs):
//   key = (seed lo, seed hi); counter = (col / 4, row, batch * heads_q + head, offset lo);
//   Philox4x32-10 gives r0..r3 for columns 4*(col/4) + 0..3; kept iff r >= floor(p * 2^32), scaled by 1/(1-p).
// row and col are the query and key positions within their sequence.
#pragma once
#include "fa_ptx.cuh"

struct PhiloxWords {
    unsigned int x, y, z, w;
};

struct DropoutParams {
    unsigned int seed_lo, seed_hi, offset, keep_threshold;
    float keep_scale;   // 1 / (1 - p)
    int enabled;
};

__device__ __forceinline__ PhiloxWords philox4x32_10(unsigned int c0, unsigned int c1, unsigned int c2, unsigned int c3,
                                               unsigned int k0, unsigned int k1) {
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        const unsigned int hi_a = __umulhi(0xD2511F53u, c0), lo_a = 0xD2511F53u * c0;
        const unsigned int hi_b = __umulhi(0xCD9E8D57u, c2), lo_b = 0xCD9E8D57u * c2;
        c0 = hi_b ^ c1 ^ k0;
        c1 = lo_b;
        c2 = hi_a ^ c3 ^ k1;
        c3 = lo_a;
        if (round < 9) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
    }
    return PhiloxWords{c0, c1, c2, c3};
}

// The four random words of (row, col group) for one (batch, head) stream.
__device__ __forceinline__ PhiloxWords dropout_words(const DropoutParams& d, unsigned int stream, int row, int col) {
    return philox4x32_10((unsigned int)(col >> 2), (unsigned int)row, stream, d.offset, d.seed_lo, d.seed_hi);
}

__device__ __forceinline__ unsigned int word_of(const PhiloxWords& w, int col) {
    const int k = col & 3;
    return k == 0 ? w.x : k == 1 ? w.y : k == 2 ? w.z : w.w;
}

// 0 for a dropped element, 1/(1-p) for a kept one.
__device__ __forceinline__ float keep_factor(const DropoutParams& d, unsigned int word) {
    return word >= d.keep_threshold ? d.keep_scale : 0.f;
}
