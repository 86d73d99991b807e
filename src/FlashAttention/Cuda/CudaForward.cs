using FlashAttn.Validation;

namespace FlashAttn.Cuda;

/// <summary>
/// Launches the FlashAttention-2 forward kernel for validated shapes: picks the variant, compiles it once
/// (NVRTC, disk-cached), pads head dims that are not a multiple of 8 (as flash-attn's wrapper does) and
/// launches on the caller's stream. Nothing here synchronises, except freeing padding buffers.
/// </summary>
internal static class CudaForward
{
    private const float Log2E = 1.4426950408889634f;

    public static void Run<T>(CudaDevice device, ProblemShape shape, AttentionSettings settings, DeviceOperand q, DeviceOperand k,
        DeviceOperand v, DeviceOperand output, DeviceOperand lse, CudaStream stream) where T : unmanaged
    {
        if (shape.Batch == 0 || shape.MaxSeqlenQ == 0 || shape.HeadsQ == 0) return;
        bool bf16 = typeof(T) == typeof(BFloat16);
        var variant = ForwardVariant.For(shape.HeadDim, bf16, settings.Dropout.Enabled);
        var kernel = KernelLibrary.Get(device, "flash_fwd.cu", ForwardVariant.KernelName, variant.Name, variant.CompilerDefines);
        kernel.SetMaxDynamicSharedMemory(variant.SharedMemoryBytes);

        int paddedDim = (shape.HeadDim + 7) / 8 * 8;
        bool pad = paddedDim != shape.HeadDim;
        var temporaries = new List<DeviceMemory>();
        try
        {
            DeviceOperand Staged(DeviceOperand x, int heads, int rows) =>
                pad || !x.IsChunkAligned ? HeadCopy.ToDense(device, x, shape.Batch, rows, heads, shape.HeadDim, paddedDim, stream, temporaries) : x;

            var qs = Staged(q, shape.HeadsQ, shape.TotalQ);
            var ks = Staged(k, shape.HeadsKv, shape.MaxSeqlenK);
            var vs = Staged(v, shape.HeadsKv, shape.MaxSeqlenK);
            bool stageOutput = pad || !output.IsChunkAligned;
            var os = stageOutput ? HeadCopy.Allocate(shape.Batch, shape.TotalQ, shape.HeadsQ, paddedDim, 2, temporaries) : output;

            var parameters = new FlashForwardParams
            {
                Q = qs.Pointer, K = ks.Pointer, V = vs.Pointer, O = os.Pointer, Lse = lse.Pointer,
                QBatchStride = qs.StrideBatch, QRowStride = qs.StrideRow, QHeadStride = qs.StrideHead,
                KBatchStride = ks.StrideBatch, KRowStride = ks.StrideRow, KHeadStride = ks.StrideHead,
                VBatchStride = vs.StrideBatch, VRowStride = vs.StrideRow, VHeadStride = vs.StrideHead,
                OBatchStride = os.StrideBatch, ORowStride = os.StrideRow, OHeadStride = os.StrideHead,
                LseBatchStride = lse.StrideBatch, LseHeadStride = lse.StrideHead,
                Batch = shape.Batch, HeadsQ = shape.HeadsQ, HeadsKv = shape.HeadsKv, HeadDim = paddedDim,
                SeqlenQ = shape.MaxSeqlenQ, SeqlenK = shape.MaxSeqlenK,
                WindowLeft = settings.WindowLeft, WindowRight = settings.WindowRight,
                ScaleLog2 = settings.Scale * Log2E, Scale = settings.Scale, Dropout = DropoutKernelParams.From(settings.Dropout),
            };
            uint blocksM = (uint)((shape.MaxSeqlenQ + variant.BlockM - 1) / variant.BlockM);
            kernel.Launch(parameters, (blocksM, (uint)shape.HeadsQ, (uint)shape.Batch), ((uint)variant.Threads, 1, 1), variant.SharedMemoryBytes, stream);

            if (stageOutput)
                HeadCopy.Copy(device, os, output, shape.Batch, shape.TotalQ, shape.HeadsQ, paddedDim, shape.HeadDim, stream);
        }
        finally
        {
            foreach (var memory in temporaries) memory.Dispose(); // cuMemFree waits for the work that uses it
        }
    }
}
