namespace FlashAttn.Cuda;

/// <summary>A (batch, row, head, dim) view of device memory: base address and element strides (dim contiguous).</summary>
internal readonly record struct DeviceOperand(nint Pointer, long StrideBatch, long StrideRow, long StrideHead)
{
    public static DeviceOperand Of<T>(CudaTensor<T> tensor) where T : unmanaged
    {
        var s = tensor.Strides;
        return tensor.Rank == 4 ? new(tensor.DevicePointer, s[0], s[1], s[2]) : new(tensor.DevicePointer, 0, s[0], s[1]);
    }

    /// <summary>The kernels move 16-byte chunks: the base and every stride must keep 8 elements aligned.</summary>
    public bool IsChunkAligned => Pointer % 16 == 0 && StrideBatch % 8 == 0 && StrideRow % 8 == 0 && StrideHead % 8 == 0;
}
