using FlashAttn.Validation;

namespace FlashAttn.Cuda;

/// <summary>
/// Launches Kernels/flash_probs.cu for <see cref="AttentionOptions.ReturnProbabilities"/>: P = exp(logit - LSE) from the
/// LSE forward wrote, fp32 (batch, heads_q, seqlen_q, seqlen_k), hidden entries 0, dropped entries negated, exactly as
/// the CPU path's <see cref="Cpu.CpuProbabilities"/>. Launch it on forward's stream, after forward.
/// </summary>
internal static class CudaProbabilities
{
    private const int Threads = 256; // must match the kernels' __launch_bounds__

    /// <param name="device">The device holding every operand.</param>
    /// <param name="shape">A fixed-length (not varlen) shape.</param>
    /// <param name="settings">The settings forward ran with (scale, window, softcap, dropout).</param>
    /// <param name="q">q: (batch, row, head) strides in elements, head dim contiguous.</param>
    /// <param name="k">k, like q.</param>
    /// <param name="lse">Forward's LSE: its batch and head strides (row stride 1).</param>
    /// <param name="probabilities">A dense (batch, heads_q, seqlen_q, seqlen_k) fp32 buffer.</param>
    /// <param name="stream">Forward's stream.</param>
    public static void Run<T>(CudaDevice device, ProblemShape shape, AttentionSettings settings, DeviceOperand q, DeviceOperand k,
        DeviceOperand lse, nint probabilities, CudaStream stream) where T : unmanaged
    {
        if (shape.IsVarlen)
            throw new NotSupportedException("Probabilities on the GPU are for fixed-length batches; varlen runs on the CPU path.");
        long total = (long)shape.Batch * shape.HeadsQ * shape.MaxSeqlenQ * shape.MaxSeqlenK;
        if (total == 0) return;
        long slopeBytes = ScoreModifiers.SlopeBytes(settings);
        using var slopeLease = slopeBytes > 0 ? WorkspacePool.Rent(device, stream, slopeBytes) : null;
        Launch<T>(device, shape, settings, q, k, lse, probabilities, stream, ScoreModifiers.Prepare(settings, stream, slopeLease?.Pointer ?? 0), total);
    }

    private static void Launch<T>(CudaDevice device, ProblemShape shape, AttentionSettings settings, DeviceOperand q, DeviceOperand k,
        DeviceOperand lse, nint probabilities, CudaStream stream, ScoreModifiers modifiers, long total) where T : unmanaged
    {
        // The kernel takes the raw slopes (it computes the logit itself), one per (batch, head).
        nint alibiSlopes = modifiers.AlibiSlopes;
        long alibiBatchStride = modifiers.AlibiBatchStride;

        string name = typeof(T) == typeof(BFloat16) ? "flash_probs_bf16" : "flash_probs_fp16";
        var kernel = KernelLibrary.Get(device, "flash_probs.cu", name, "flash_probs", []);
        var parameters = new FlashProbabilitiesParams
        {
            Q = q.Pointer, K = k.Pointer, Lse = lse.Pointer, AlibiSlopes = alibiSlopes, Probabilities = probabilities,
            QBatchStride = q.StrideBatch, QRowStride = q.StrideRow, QHeadStride = q.StrideHead,
            KBatchStride = k.StrideBatch, KRowStride = k.StrideRow, KHeadStride = k.StrideHead,
            LseBatchStride = lse.StrideBatch, LseHeadStride = lse.StrideHead, AlibiBatchStride = alibiBatchStride,
            Batch = shape.Batch, HeadsQ = shape.HeadsQ, HeadsKv = shape.HeadsKv, HeadDim = shape.HeadDim,
            SeqlenQ = shape.MaxSeqlenQ, SeqlenK = shape.MaxSeqlenK,
            WindowLeft = settings.WindowLeft, WindowRight = settings.WindowRight,
            Scale = settings.Scale, Softcap = settings.Softcap, Dropout = DropoutKernelParams.From(settings.Dropout),
        };
        // The kernel grid-strides, so the grid only needs to fill the GPU.
        uint blocks = (uint)Math.Min((total + Threads - 1) / Threads, 65535L * 16);
        kernel.Launch(parameters, (blocks, 1, 1), (Threads, 1, 1), 0, stream);
    }
}
