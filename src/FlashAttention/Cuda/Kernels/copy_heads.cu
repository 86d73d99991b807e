// Copies 16-bit (batch, row, head, dim) tensors between strided layouts, zero-filling dims past the source's
// head dim. The forward launcher uses it to pad head dims that are not a multiple of 8 (or misaligned views)
// into the kernels' 16-byte-chunk layout, and to copy the padded output back.
#include "fa_ptx.cuh"

struct CopyHeadsParams {
    const void* src;
    void* dst;
    long long src_batch_stride, src_row_stride, src_head_stride;
    long long dst_batch_stride, dst_row_stride, dst_head_stride;
    int batch, rows, heads, src_dim, dst_dim;
};

extern "C" __global__ void copy_heads_kernel(const CopyHeadsParams p) {
    const long long total = (long long)p.batch * p.rows * p.heads * p.dst_dim;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        int c = (int)(i % p.dst_dim);
        long long rest = i / p.dst_dim;
        int h = (int)(rest % p.heads);
        rest /= p.heads;
        int r = (int)(rest % p.rows);
        int b = (int)(rest / p.rows);
        u16 value = 0;
        if (c < p.src_dim)
            value = ((const u16*)p.src)[b * p.src_batch_stride + r * p.src_row_stride + h * p.src_head_stride + c];
        ((u16*)p.dst)[b * p.dst_batch_stride + r * p.dst_row_stride + h * p.dst_head_stride + c] = value;
    }
}
