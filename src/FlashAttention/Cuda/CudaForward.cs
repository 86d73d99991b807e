using FlashAttn.Validation;

namespace FlashAttn.Cuda;

/// <summary>
/// Launches the FlashAttention-2 forward kernel for validated shapes: picks the variant, compiles it once
/// (NVRTC, disk-cached), pads head dims that are not a multiple of 8 (as flash-attn's wrapper does) and
/// launches on the caller's stream. Nothing here synchronises, except freeing padding buffers.
/// Varlen: operands are (total, heads, d) views (batch stride 0) and the kernel reads the device offsets.
/// </summary>
internal static class CudaForward
{
    private const float Log2E = 1.4426950408889634f;

    public static void Run<T>(CudaDevice device, ProblemShape shape, AttentionSettings settings, DeviceOperand q, DeviceOperand k,
        DeviceOperand v, DeviceOperand output, DeviceOperand lse, CudaStream stream, nint cuSeqlensQ = 0, nint cuSeqlensK = 0) where T : unmanaged
    {
        if (shape.Batch == 0 || shape.MaxSeqlenQ == 0 || shape.HeadsQ == 0) return;
        bool bf16 = typeof(T) == typeof(BFloat16);
        var variant = ForwardVariant.Choose(device.Architecture, shape.HeadDim, bf16, settings.Dropout.Enabled, settings.Softcap > 0f,
            settings.AlibiSlopes is not null, settings.WindowLeft, settings.WindowRight);
        var kernel = KernelLibrary.Get(device, variant.SourceFile, variant.Kernel, variant.Name, variant.CompilerDefines);
        kernel.SetMaxDynamicSharedMemory(variant.SharedMemoryBytes);

        int paddedDim = (shape.HeadDim + 7) / 8 * 8;
        bool pad = paddedDim != shape.HeadDim;
        var temporaries = new List<DeviceMemory>();
        try
        {
            // Varlen tensors are one (total, heads, d) block: staged as a batch of one.
            int stagedBatch = shape.IsVarlen ? 1 : shape.Batch;
            DeviceOperand Staged(DeviceOperand x, int heads, int rows) =>
                pad || !x.IsChunkAligned ? HeadCopy.ToDense(device, x, stagedBatch, rows, heads, shape.HeadDim, paddedDim, stream, temporaries) : x;

            var qs = Staged(q, shape.HeadsQ, shape.TotalQ);
            var ks = Staged(k, shape.HeadsKv, shape.TotalK);
            var vs = Staged(v, shape.HeadsKv, shape.TotalK);
            bool stageOutput = pad || !output.IsChunkAligned;
            var os = stageOutput ? HeadCopy.Allocate(stagedBatch, shape.TotalQ, shape.HeadsQ, paddedDim, 2, temporaries) : output;
            if (shape.IsVarlen) (qs, ks, vs, os) = (qs with { StrideBatch = 0 }, ks with { StrideBatch = 0 }, vs with { StrideBatch = 0 }, os with { StrideBatch = 0 });
            // The slopes go to the stream's pooled workspace, held until the launch is enqueued (forward needs none otherwise).
            long slopeBytes = ScoreModifiers.SlopeBytes(settings);
            using var slopeLease = slopeBytes > 0 ? WorkspacePool.Rent(device, stream, slopeBytes) : null;
            var modifiers = ScoreModifiers.Prepare(settings, stream, slopeLease?.Pointer ?? 0);

            var parameters = new FlashForwardParams
            {
                Q = qs.Pointer, K = ks.Pointer, V = vs.Pointer, O = os.Pointer, Lse = lse.Pointer,
                CuSeqlensQ = cuSeqlensQ, CuSeqlensK = cuSeqlensK, AlibiSlopes = modifiers.AlibiSlopes, AlibiBatchStride = modifiers.AlibiBatchStride,
                QBatchStride = qs.StrideBatch, QRowStride = qs.StrideRow, QHeadStride = qs.StrideHead,
                KBatchStride = ks.StrideBatch, KRowStride = ks.StrideRow, KHeadStride = ks.StrideHead,
                VBatchStride = vs.StrideBatch, VRowStride = vs.StrideRow, VHeadStride = vs.StrideHead,
                OBatchStride = os.StrideBatch, ORowStride = os.StrideRow, OHeadStride = os.StrideHead,
                LseBatchStride = lse.StrideBatch, LseHeadStride = lse.StrideHead,
                Batch = shape.Batch, HeadsQ = shape.HeadsQ, HeadsKv = shape.HeadsKv, HeadDim = paddedDim,
                SeqlenQ = shape.MaxSeqlenQ, SeqlenK = shape.MaxSeqlenK, TotalQ = shape.TotalQ, TotalK = shape.TotalK,
                WindowLeft = settings.WindowLeft, WindowRight = settings.WindowRight,
                ScaleLog2 = modifiers.EffectiveScale * Log2E, Scale = modifiers.EffectiveScale, SoftcapPre = modifiers.SoftcapPre,
                AlibiFactor = modifiers.AlibiFactor, Dropout = DropoutKernelParams.From(settings.Dropout),
            };
            uint blocksM = (uint)((shape.MaxSeqlenQ + variant.BlockM - 1) / variant.BlockM);
            kernel.Launch(parameters, (blocksM, (uint)shape.HeadsQ, (uint)shape.Batch), ((uint)variant.Threads, 1, 1), variant.SharedMemoryBytes, stream);

            if (stageOutput)
                HeadCopy.Copy(device, os, output, stagedBatch, shape.TotalQ, shape.HeadsQ, paddedDim, shape.HeadDim, stream);
        }
        finally
        {
            foreach (var memory in temporaries) memory.Dispose(); // cuMemFree waits for the work that uses it
        }
    }
}
