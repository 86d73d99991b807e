using System.Globalization;

namespace FlashAttn.Cuda;

/// <summary>One compiled specialisation of the FlashAttention-2 backward kernels (Kernels/flash_bwd.cu). Tiles are fixed
/// in the kernel: 64 keys per CTA (16 per warp, 4 warps) against 64-query blocks.</summary>
/// <param name="HeadDimBucket">64 or 128 (larger head dims are not in the backward kernel yet).</param>
/// <param name="BFloat16">bf16 (true) or fp16 (false).</param>
/// <param name="Deterministic">dQ through per-split buffers summed in order instead of atomics.</param>
internal sealed record BackwardVariant(int HeadDimBucket, bool BFloat16, bool Deterministic)
{
    public const int BlockN = 64, BlockM = 64, Threads = 128;
    public const string PrepareKernel = "flash_bwd_prepare", MainKernel = "flash_bwd_kernel", ConvertKernel = "flash_bwd_convert";

    public static BackwardVariant For(int headDim, bool bfloat16, bool deterministic) => headDim <= 128
        ? new(headDim <= 64 ? 64 : 128, bfloat16, deterministic)
        : throw new NotSupportedException($"head dim {headDim}: the CUDA backward kernel covers head dims up to 128 so far; run backward on the CPU path (host tensors) for larger ones.");

    public string Name => $"flash_bwd_hdim{HeadDimBucket}_{(BFloat16 ? "bf16" : "fp16")}{(Deterministic ? "_deterministic" : "")}";

    /// <summary>K, V and dS tiles, plus two stages of (Q, dO) tiles with their per-query LSE and D.</summary>
    public int SharedMemoryBytes => (2 * BlockN + 4 * BlockM) * HeadDimBucket * 2 + BlockN * BlockM * 2 + 4 * BlockM * sizeof(float);

    public IReadOnlyList<string> CompilerDefines =>
    [
        "-DFA_HEAD_DIM=" + HeadDimBucket.ToString(CultureInfo.InvariantCulture), "-DFA_BF16=" + (BFloat16 ? "1" : "0"),
        "-DFA_DETERMINISTIC=" + (Deterministic ? "1" : "0"),
    ];
}
