namespace FlashAttn.Cuda;

/// <summary>Strided copies of 16-bit head vectors on the device (Kernels/copy_heads.cu): padding to the kernels'
/// 16-byte layout and back.</summary>
internal static class HeadCopy
{
    /// <summary>A dense (batch, rows, heads, dim) buffer of 16-bit elements, tracked for disposal.</summary>
    public static DeviceOperand Allocate(int batch, int rows, int heads, int dim, int elementBytes, List<DeviceMemory> owner)
    {
        var memory = DeviceMemory.Allocate((long)batch * rows * heads * dim * elementBytes);
        owner.Add(memory);
        return new DeviceOperand(memory.Pointer, (long)rows * heads * dim, (long)heads * dim, dim);
    }

    public static DeviceOperand ToDense(CudaDevice device, DeviceOperand source, int batch, int rows, int heads, int dim, int paddedDim,
        CudaStream stream, List<DeviceMemory> owner)
    {
        var dense = Allocate(batch, rows, heads, paddedDim, 2, owner);
        Copy(device, source, dense, batch, rows, heads, dim, paddedDim, stream);
        return dense;
    }

    /// <summary>dst[..., c] = c &lt; sourceDim ? src[..., c] : 0 for c &lt; destinationDim.</summary>
    public static void Copy(CudaDevice device, DeviceOperand source, DeviceOperand destination, int batch, int rows, int heads,
        int sourceDim, int destinationDim, CudaStream stream)
    {
        long total = (long)batch * rows * heads * destinationDim;
        if (total == 0) return;
        var kernel = KernelLibrary.Get(device, "copy_heads.cu", "copy_heads_kernel", "copy_heads", []);
        var parameters = new CopyHeadsParams
        {
            Source = source.Pointer, Destination = destination.Pointer,
            SourceBatchStride = source.StrideBatch, SourceRowStride = source.StrideRow, SourceHeadStride = source.StrideHead,
            DestinationBatchStride = destination.StrideBatch, DestinationRowStride = destination.StrideRow, DestinationHeadStride = destination.StrideHead,
            Batch = batch, Rows = rows, Heads = heads, SourceDim = sourceDim, DestinationDim = destinationDim,
        };
        uint blocks = (uint)Math.Min((total + 255) / 256, 65535L * 16);
        kernel.Launch(parameters, (blocks, 1, 1), (256, 1, 1), 0, stream);
    }
}
