// Score modifiers shared by the forward and backward kernels, each a compile-time variant (-D FA_SOFTCAP=1,
// -D FA_ALIBI=1) so that kernels without them pay nothing.
//
// The kernels keep scores in "raw" units and fold the softmax scale into one FFMA before exp2, so each modifier is
// written in those units, with the effective scale s_eff that the launcher puts into scale_log2:
//   softcap:  logit = cap * tanh(s * scale / cap)      -> raw' = tanh(raw * softcap_pre), s_eff = cap
//                                                          (softcap_pre = scale / cap)
//   ALiBi:    logit -= slope * |i + seqlen_k - seqlen_q - j|
//                                                       -> raw' -= slope * alibi_factor * |diagonal - j|
//                                                          (alibi_factor = 1 / s_eff)
// Softcap's backward keeps d tanh = 1 - tanh^2 per score; the softmax scale still enters dK and dQ once at the end.
#pragma once

#ifndef FA_SOFTCAP
#define FA_SOFTCAP 0
#endif
#ifndef FA_ALIBI
#define FA_ALIBI 0
#endif

// tanh on the special-function unit (sm_75+): max relative error about 2^-11, as flash-attn's softcap uses.
// FA_EXACT_TANH=1 (diagnostic only, through FLASHATTN_EXTRA_DEFINES) takes the libdevice tanhf instead, to tell the
// approximation's share of an error apart from the rest.
#ifndef FA_EXACT_TANH
#define FA_EXACT_TANH 0
#endif
__device__ __forceinline__ float fast_tanh(float x) {
#if FA_EXACT_TANH
    return tanhf(x);
#else
    float y; asm("tanh.approx.f32 %0, %1;" : "=f"(y) : "f"(x)); return y;
#endif
}

// The ALiBi slope of (batch, head) in raw-score units; 0 without ALiBi (and the slopes are then never read).
__device__ __forceinline__ float alibi_raw_slope(const float* slopes, long long batch_stride, float factor, int batch, int head) {
#if FA_ALIBI
    return slopes[batch * batch_stride + head] * factor;
#else
    return 0.f;
#endif
}

// Applies the compiled-in modifiers to one raw score at signed distance (diagonal - key) from the query's diagonal.
// The distance is a float (exact below 2^24) that callers form as a per-thread base minus a compile-time constant, so
// ALiBi costs an FADD and an FFMA with |.| per score: an int-to-float conversion per score would run on the same slow pipe
// as exp2. Softcap returns d tanh through `dtanh` (left untouched without softcap).
__device__ __forceinline__ float modify_score(float raw, float softcap_pre, float raw_slope, float distance, float& dtanh) {
#if FA_SOFTCAP
    raw = fast_tanh(raw * softcap_pre);
    dtanh = fmaf(-raw, raw, 1.f);
#endif
#if FA_ALIBI
    raw = fmaf(-raw_slope, fabsf(distance), raw);
#endif
    return raw;
}
