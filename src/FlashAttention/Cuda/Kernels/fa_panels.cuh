// Shared-memory tiles in the layout wgmma reads (Hopper kernels): 64-column panels of 128-byte rows, the 128-byte swizzle
// (16-byte chunk c of row r at chunk c ^ r % 8 inside each 1024-byte atom of 8 rows), every tile 1024-byte aligned.
// A (ROWS x D) tile is D / 64 panels of ROWS rows; at D = 64 it is the FA2 tile layout of fa_tile.cuh.
#pragma once
#include "fa_ptx.cuh"

static constexpr int kPanelRowBytes = 128;   // 64 16-bit elements per panel row

// Byte offset of 16-byte chunk c (8 elements) of row r in a panel tile of ROWS rows.
template <int ROWS>
__device__ __forceinline__ u32 panel_offset(int r, int c) {
    return (u32)((c / 8) * ROWS * kPanelRowBytes + r * kPanelRowBytes + (((c ^ r) & 7) << 4));
}

// Rows [row0, row0 + ROWS) of a (rows x head_dim) slab into a panel tile of D columns with THREADS threads (cp.async, not
// committed); rows at or past row_limit and columns at or past head_dim are zero-filled.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_panels(u32 tile, const u16* base, long long row_stride, int row0, int row_limit, int head_dim, int tid) {
    constexpr int kChunks = D / 8;
    static_assert((ROWS * kChunks) % THREADS == 0, "chunks divide over the threads");
    const bool whole = row0 + ROWS <= row_limit && head_dim == D;
#pragma unroll 8
    for (int i = 0; i < ROWS * kChunks / THREADS; ++i) {
        const int idx = tid + i * THREADS, r = idx / kChunks, c = idx % kChunks;
        const int row = row0 + r;
        const bool inside = whole || (row < row_limit && c * 8 < head_dim);
        const u16* src = inside ? base + (long long)row * row_stride + c * 8 : base;
        cp_async_16(tile + panel_offset<ROWS>(r, c), src, inside ? 16 : 0);
    }
}

// Descriptor offset (in 16-byte units, added to a descriptor's start-address field) of k-step j (16 columns) of a K-major
// panel tile of ROWS rows: 32 bytes per step inside a panel, a panel every 4 steps.
template <int ROWS>
__device__ __forceinline__ u64 kmajor_step(int j) { return (u64)(((j % 4) * 32 + (j / 4) * ROWS * kPanelRowBytes) >> 4); }

// Descriptor offset of k-step j (16 rows) of an MN-major panel tile (the contraction runs down its rows): 16 rows of 128 bytes.
__device__ __forceinline__ u64 mnmajor_step(int j) { return (u64)((j * 16 * kPanelRowBytes) >> 4); }
