using FlashAttn.Validation;

namespace FlashAttn.Cuda;

/// <summary>
/// Launches the FlashAttention-2 backward kernels for validated shapes: the pre-pass (D = rowsum(dO * O), zeroed dQ
/// accumulators), the key-block-parallel main kernel, and the dQ conversion. Workspace: D and the fp32 dQ accumulators
/// (one buffer, or one per split when deterministic). Head dims that are not a multiple of 8, or misaligned views, are
/// staged through padded copies as in the forward. Varlen: operands are (total, heads, d) views, the main kernel reads the
/// device offsets, and the per-row pre-pass and conversion see one batch of total_q rows.
/// </summary>
internal static class CudaBackward
{
    private const float Log2E = 1.4426950408889634f;

    /// <summary>Runs backward; returns the workspace bytes it allocated.</summary>
    public static long Run<T>(CudaDevice device, ProblemShape shape, AttentionSettings settings, bool deterministic, DeviceOperand dOut,
        DeviceOperand q, DeviceOperand k, DeviceOperand v, DeviceOperand output, DeviceOperand lse, DeviceOperand dq, DeviceOperand dk,
        DeviceOperand dv, CudaStream stream, nint cuSeqlensQ = 0, nint cuSeqlensK = 0) where T : unmanaged
    {
        if (shape.Batch == 0 || shape.MaxSeqlenQ == 0 && shape.MaxSeqlenK == 0) return 0;
        if (shape.HeadsQ == 0)
        {
            // No query head reads k or v: dK = dV = 0 (dQ is empty), written straight into the caller's tensors.
            int batch = shape.IsVarlen ? 1 : shape.Batch, keyRows = shape.IsVarlen ? shape.TotalK : shape.MaxSeqlenK;
            DeviceOperand Rows(DeviceOperand x) => shape.IsVarlen ? x with { StrideBatch = 0 } : x;
            ZeroKeyGradients(device, Rows(dk), Rows(dv), batch, keyRows, shape.HeadsKv, shape.HeadDim, stream);
            return 0;
        }
        var variant = BackwardVariant.Choose(device.Architecture, shape.HeadDim, typeof(T) == typeof(BFloat16), deterministic, settings.Dropout.Enabled,
            settings.Softcap > 0f, settings.AlibiSlopes is not null, ForwardVariant.IsNarrowWindow(settings.WindowLeft, settings.WindowRight));
        int paddedDim = (shape.HeadDim + 7) / 8 * 8;
        bool pad = paddedDim != shape.HeadDim;
        bool varlen = shape.IsVarlen;
        int b = shape.Batch, sq = shape.MaxSeqlenQ, sk = shape.MaxSeqlenK, hq = shape.HeadsQ, hk = shape.HeadsKv;
        // Token rows of the q-side and k-side tensors and the batch they are staged as (varlen: one block of total rows).
        int rowsQ = varlen ? shape.TotalQ : sq, rowsK = varlen ? shape.TotalK : sk, stagedBatch = varlen ? 1 : b;
        var temporaries = new List<DeviceMemory>();
        try
        {
            DeviceOperand Varlen(DeviceOperand x) => varlen ? x with { StrideBatch = 0 } : x;
            DeviceOperand In(DeviceOperand x, int rows, int heads) => Varlen(
                pad || !x.IsChunkAligned ? HeadCopy.ToDense(device, x, stagedBatch, rows, heads, shape.HeadDim, paddedDim, stream, temporaries) : x);
            DeviceOperand Out(DeviceOperand x, int rows, int heads) => Varlen(
                pad || !x.IsChunkAligned ? HeadCopy.Allocate(stagedBatch, rows, heads, paddedDim, 2, temporaries) : x);
            var (qs, ks, vs, os, dos) = (In(q, rowsQ, hq), In(k, rowsK, hk), In(v, rowsK, hk), In(output, rowsQ, hq), In(dOut, rowsQ, hq));
            var (dqs, dks, dvs) = (Out(dq, rowsQ, hq), Out(dk, rowsK, hk), Out(dv, rowsK, hk));

            int keyBlocks = (sk + variant.BlockN - 1) / variant.BlockN;
            int splits = deterministic ? Math.Clamp((2 * device.MultiprocessorCount + hk * b - 1) / (hk * b), 1, Math.Max(1, keyBlocks)) : 1;
            // dQ accumulators and D: (batch, seqlen_q) rows, or the total_q token rows when varlen.
            long accumulatorRows = (long)stagedBatch * rowsQ;
            long accumulatorStride = accumulatorRows * hq * paddedDim;
            long deltaBytes = Align256(accumulatorRows * hq * sizeof(float)), accumulatorBytes = accumulatorStride * splits * sizeof(float);
            // Held until every launch that uses it is enqueued (see WorkspacePool: sequences on a stream must not interleave).
            long slopeBytes = ScoreModifiers.SlopeBytes(settings);
            using var workspace = WorkspacePool.Rent(device, stream, deltaBytes + accumulatorBytes + slopeBytes);
            nint delta = workspace.Pointer, accumulators = workspace.Pointer + (nint)deltaBytes;
            var modifiers = ScoreModifiers.Prepare(settings, stream, accumulators + (nint)accumulatorBytes);

            var parameters = new FlashBackwardParams
            {
                Q = qs.Pointer, K = ks.Pointer, V = vs.Pointer, O = os.Pointer, DOut = dos.Pointer,
                DQ = dqs.Pointer, DK = dks.Pointer, DV = dvs.Pointer, Lse = lse.Pointer, Delta = delta, DQAccum = accumulators,
                CuSeqlensQ = cuSeqlensQ, CuSeqlensK = cuSeqlensK, AlibiSlopes = modifiers.AlibiSlopes,
                QBatchStride = qs.StrideBatch, QRowStride = qs.StrideRow, QHeadStride = qs.StrideHead,
                KBatchStride = ks.StrideBatch, KRowStride = ks.StrideRow, KHeadStride = ks.StrideHead,
                VBatchStride = vs.StrideBatch, VRowStride = vs.StrideRow, VHeadStride = vs.StrideHead,
                OBatchStride = os.StrideBatch, ORowStride = os.StrideRow, OHeadStride = os.StrideHead,
                DOutBatchStride = dos.StrideBatch, DOutRowStride = dos.StrideRow, DOutHeadStride = dos.StrideHead,
                DQBatchStride = dqs.StrideBatch, DQRowStride = dqs.StrideRow, DQHeadStride = dqs.StrideHead,
                DKBatchStride = dks.StrideBatch, DKRowStride = dks.StrideRow, DKHeadStride = dks.StrideHead,
                DVBatchStride = dvs.StrideBatch, DVRowStride = dvs.StrideRow, DVHeadStride = dvs.StrideHead,
                LseBatchStride = lse.StrideBatch, LseHeadStride = lse.StrideHead,
                DQAccumSplitStride = accumulatorStride, DQAccumBatchStride = varlen ? 0 : (long)sq * hq * paddedDim,
                AlibiBatchStride = modifiers.AlibiBatchStride,
                Batch = b, HeadsQ = hq, HeadsKv = hk, HeadDim = paddedDim, SeqlenQ = sq, SeqlenK = sk, TotalQ = shape.TotalQ, TotalK = shape.TotalK,
                WindowLeft = settings.WindowLeft, WindowRight = settings.WindowRight, Splits = splits,
                Scale = settings.Scale, ScaleLog2 = modifiers.EffectiveScale * Log2E, SoftcapPre = modifiers.SoftcapPre,
                AlibiFactor = modifiers.AlibiFactor, Dropout = DropoutKernelParams.From(settings.Dropout),
            };
            // The pre-pass reads D's strides from the LSE's: allocate D with the same (batch, head, row) layout.
            // (An LSE without rows has no meaningful strides: row-major strides of a zero length are 1.)
            bool lseDense = accumulatorRows == 0 || hq == 1 && (varlen || b == 1)
                || (varlen ? lse.StrideBatch == 0 && lse.StrideHead == shape.TotalQ : (b == 1 || lse.StrideBatch == (long)hq * sq) && lse.StrideHead == sq);
            if (!lseDense)
                throw new ArgumentException(
                    $"logSumExp must be dense {(varlen ? "(heads_q, total_q)" : "(batch, heads_q, seqlen_q)")}, as forward returns it.", "logSumExp");
            // The per-row pre-pass and conversion walk varlen's token rows as one batch of total_q rows.
            var rowParameters = varlen ? parameters with { Batch = 1, SeqlenQ = shape.TotalQ } : parameters;

            var prepare = KernelLibrary.Get(device, variant.SourceFile, BackwardVariant.PrepareKernel, variant.Name, variant.CompilerDefines);
            var main = KernelLibrary.Get(device, variant.SourceFile, BackwardVariant.MainKernel, variant.Name, variant.CompilerDefines);
            var convert = KernelLibrary.Get(device, variant.SourceFile, BackwardVariant.ConvertKernel, variant.Name, variant.CompilerDefines);
            main.SetMaxDynamicSharedMemory(variant.SharedMemoryBytes);

            uint rowPassBlocks = RowPassBlocks(accumulatorRows * hq, paddedDim);
            prepare.Launch(rowParameters, (rowPassBlocks, 1, 1), (RowPassThreads, 1, 1), 0, stream);
            if (sq > 0 && sk > 0)
                main.Launch(parameters, ((uint)(deterministic ? splits : keyBlocks), (uint)hk, (uint)b), ((uint)variant.Threads, 1, 1),
                    variant.SharedMemoryBytes, stream);
            else if (sk > 0)
                ZeroKeyGradients(device, dks, dvs, stagedBatch, rowsK, hk, paddedDim, stream);
            if (accumulatorRows * hq > 0)
                convert.Launch(rowParameters, (rowPassBlocks, 1, 1), (RowPassThreads, 1, 1), 0, stream);

            if (dqs != dq) HeadCopy.Copy(device, dqs, dq, stagedBatch, rowsQ, hq, paddedDim, shape.HeadDim, stream);
            if (dks != dk) HeadCopy.Copy(device, dks, dk, stagedBatch, rowsK, hk, paddedDim, shape.HeadDim, stream);
            if (dvs != dv) HeadCopy.Copy(device, dvs, dv, stagedBatch, rowsK, hk, paddedDim, shape.HeadDim, stream);
            return deltaBytes + accumulatorBytes + slopeBytes;
        }
        finally
        {
            foreach (var memory in temporaries) memory.Dispose(); // cuMemFree waits for the work that uses it
        }
    }

    private static long Align256(long bytes) => (bytes + 255) / 256 * 256;

    private const int RowPassThreads = 256;

    /// <summary>Blocks of the per-row passes (D pre-pass, dQ conversion): one 16-byte chunk per thread, a row's chunks in a
    /// power-of-two segment of 8 to 32 lanes (row_lanes in fa_bwd_common.cuh); the kernels walk rows grid-stride, so the
    /// cap only bounds the grid.</summary>
    private static uint RowPassBlocks(long rows, int paddedDim)
    {
        int chunks = paddedDim / 8, lanes = chunks <= 8 ? 8 : chunks <= 16 ? 16 : 32;
        long rowsPerBlock = RowPassThreads / lanes;
        return (uint)Math.Clamp((rows + rowsPerBlock - 1) / rowsPerBlock, 1, 1L << 20);
    }

    /// <summary>seqlen_q = 0: no query sees any key, so dK = dV = 0.</summary>
    private static void ZeroKeyGradients(CudaDevice device, DeviceOperand dk, DeviceOperand dv, int batch, int rows, int heads, int dim, CudaStream stream)
    {
        // Copying "zero source columns" writes zeros: a head copy with source dim 0.
        HeadCopy.Copy(device, dk, dk, batch, rows, heads, 0, dim, stream);
        HeadCopy.Copy(device, dv, dv, batch, rows, heads, 0, dim, stream);
    }
}
