using System.Globalization;

namespace FlashAttn.Cuda;

/// <summary>One compiled specialisation of the FlashAttention-2 backward kernels (Kernels/flash_bwd.cu): BlockN keys per CTA
/// (16 per warp) against 64-query blocks.</summary>
/// <param name="HeadDimBucket">64 or 128 (larger head dims are not in the backward kernel yet).</param>
/// <param name="BFloat16">bf16 (true) or fp16 (false).</param>
/// <param name="Deterministic">dQ through per-split buffers summed in order instead of atomics.</param>
/// <param name="BlockN">Keys per CTA: 64 (4 warps) or 128 (8 warps; half the dQ reductions and Q/dO reloads per FLOP).</param>
/// <param name="Dropout">Compile the Philox dropout in (the mask is regenerated, never stored).</param>
internal sealed record BackwardVariant(int HeadDimBucket, bool BFloat16, bool Deterministic, int BlockN, bool Dropout = false)
{
    public const int BlockM = 64;
    public const string PrepareKernel = "flash_bwd_prepare", MainKernel = "flash_bwd_kernel", ConvertKernel = "flash_bwd_convert";

    /// <summary>Tuning override of the key-block size (64 or 128), read once; unset means the measured default.</summary>
    public const string BlockNVariable = "FLASHATTN_BWD_BLOCK_N";

    private static readonly int? BlockNOverride =
        int.TryParse(Environment.GetEnvironmentVariable(BlockNVariable), out int n) && n is 64 or 128 ? n : null;

    public static BackwardVariant For(int headDim, bool bfloat16, bool deterministic, bool dropout = false) => headDim <= 128
        ? new(headDim <= 64 ? 64 : 128, bfloat16, deterministic, BlockNOverride ?? 128, dropout)
        : throw new NotSupportedException($"head dim {headDim}: the CUDA backward kernel covers head dims up to 128 so far; run backward on the CPU path (host tensors) for larger ones.");

    public int Threads => BlockN / 16 * 32;

    public string Name => $"flash_bwd_hdim{HeadDimBucket}_n{BlockN}_{(BFloat16 ? "bf16" : "fp16")}{(Deterministic ? "_deterministic" : "")}{(Dropout ? "_dropout" : "")}";

    /// <summary>K, V and dS tiles, plus two stages of (Q, dO) tiles with their per-query LSE and D.</summary>
    public int SharedMemoryBytes => (2 * BlockN + 4 * BlockM) * HeadDimBucket * 2 + BlockN * BlockM * 2 + 4 * BlockM * sizeof(float);

    public IReadOnlyList<string> CompilerDefines =>
    [
        "-DFA_HEAD_DIM=" + HeadDimBucket.ToString(CultureInfo.InvariantCulture), "-DFA_BF16=" + (BFloat16 ? "1" : "0"),
        "-DFA_DETERMINISTIC=" + (Deterministic ? "1" : "0"), "-DFA_BLOCK_N=" + BlockN.ToString(CultureInfo.InvariantCulture), "-DFA_DROPOUT=" + (Dropout ? "1" : "0"),
    ];
}
