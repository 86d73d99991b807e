// Scalar conversions of the 16-bit element types and the 8-element (16-byte) vector unit, shared by the kernels
// that read or write elements one by one (the unfused baseline's softmax passes, backward's D pre-pass).
#pragma once
#include "fa_ptx.cuh"

struct HalfElem : Fp16 {
    static __device__ __forceinline__ float to_float(u16 x) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x)); return f; }
    static __device__ __forceinline__ u16 from_float(float f) { u16 x; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(x) : "f"(f)); return x; }
};

struct BfloatElem : Bf16 {
    static __device__ __forceinline__ float to_float(u16 x) { return __uint_as_float((u32)x << 16); }
    static __device__ __forceinline__ u16 from_float(float f) { u16 x; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(x) : "f"(f)); return x; }
};

// Eight 16-bit elements: the unit of vectorised row access (rows whose length is a multiple of 8 start 16-byte aligned).
struct __align__(16) U16x8 { u32 w[4]; };

__device__ __forceinline__ u16 lane(const U16x8& v, int e) { return (u16)(v.w[e / 2] >> (16 * (e % 2))); }
