// Shared-memory tiles: rows of D 16-bit values, moved in 16-byte chunks.
#pragma once
#include "fa_ptx.cuh"

// Byte offset of chunk c of row r. Rows of 128-byte multiples would put the 8 rows that one ldmatrix
// phase reads into the same banks (8-way conflict), so the chunk index is XOR-ed with r % 8 inside each
// 128-byte segment. Writers (cp.async) and readers (ldmatrix) both go through this one function.
template <int D>
__device__ __forceinline__ u32 swizzle(int row, int chunk) {
    return (u32)(row * (D * 2) + (((chunk & ~7) | ((chunk ^ row) & 7)) << 4));
}

// Asynchronously copies rows [row0, row0 + ROWS) of a (rows x head_dim) slab into a swizzled tile.
// Rows at or past row_limit and columns at or past head_dim are zero-filled (cp.async src-size 0), so
// tails need no other handling. head_dim is a multiple of 8 (the launcher pads otherwise).
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile(u32 tile, const u16* base, long long row_stride, int row0, int row_limit,
                                          int head_dim, int tid) {
    constexpr int kChunks = D / 8;
    static_assert((ROWS * kChunks) % THREADS == 0, "tile chunks must divide evenly over the threads");
    if (row0 + ROWS <= row_limit && head_dim == D) {
        // Whole tile inside: no predicates (the common case).
#pragma unroll
        for (int i = 0; i < ROWS * kChunks / THREADS; ++i) {
            int idx = tid + i * THREADS;
            int r = idx / kChunks, c = idx % kChunks;
            cp_async_16(tile + swizzle<D>(r, c), base + (long long)(row0 + r) * row_stride + c * 8, 16);
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < ROWS * kChunks / THREADS; ++i) {
        int idx = tid + i * THREADS;
        int r = idx / kChunks, c = idx % kChunks;
        int row = row0 + r;
        bool inside = row < row_limit && c * 8 < head_dim;
        const u16* src = inside ? base + (long long)row * row_stride + c * 8 : base;
        cp_async_16(tile + swizzle<D>(r, c), src, inside ? 16 : 0);
    }
}

// load_tile for blocks known to lie wholly inside (row0 + ROWS <= row_limit, head_dim == D), with the per-chunk address
// arithmetic hoisted: when THREADS is a multiple of the chunks per row, thread tid copies column chunk tid % chunks of
// rows tid / chunks + i * kRowsPerPass, and kRowsPerPass is a multiple of 8, so the swizzled destination of every one of
// its chunks is its first one plus a constant and the source is its first one plus i row steps. `block` points at row0.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_inside(u32 tile, const u16* block, long long row_stride, int tid) {
    constexpr int kChunks = D / 8, kRowsPerPass = THREADS / kChunks;
    static_assert(THREADS % kChunks == 0 && kRowsPerPass % 8 == 0 && ROWS % kRowsPerPass == 0, "chunk layout");
    const int r = tid / kChunks, c = tid % kChunks;
    const u16* src = block + r * row_stride + c * 8;
    const u32 dst = tile + swizzle<D>(r, c);
    const long long step = kRowsPerPass * row_stride;
#pragma unroll
    for (int i = 0; i < ROWS / kRowsPerPass; ++i) cp_async_16(dst + i * kRowsPerPass * (D * 2), src + i * step, 16);
}

// Whether load_tile_inside applies to this tile shape.
template <int D, int THREADS>
__host__ __device__ constexpr bool tile_inside_layout() { return THREADS % (D / 8) == 0 && (THREADS / (D / 8)) % 8 == 0; }

// load_tile with the hoisted fast path for blocks wholly inside.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void load_tile_fast(u32 tile, const u16* base, long long row_stride, int row0, int row_limit, int head_dim, int tid) {
    if constexpr (tile_inside_layout<D, THREADS>()) {
        if (row0 + ROWS <= row_limit && head_dim == D) {
            load_tile_inside<D, ROWS, THREADS>(tile, base + row0 * row_stride, row_stride, tid);
            return;
        }
    }
    load_tile<D, ROWS, THREADS>(tile, base, row_stride, row0, row_limit, head_dim, tid);
}
