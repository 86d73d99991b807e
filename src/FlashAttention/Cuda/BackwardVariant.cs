using System.Globalization;

namespace FlashAttn.Cuda;

/// <summary>One compiled specialisation of the FlashAttention-2 backward kernels. Head dims up to 128 run
/// Kernels/flash_bwd.cu (BlockN keys per CTA, 16 per warp, dK and dV of the warp's keys across the whole head dim in
/// registers); 192 and 256 run Kernels/flash_bwd_wide.cu (64 keys, 8 warps splitting the head dim for dK and dV, with
/// P^T and dS^T through shared memory). On sm_90 GPUs head dims up to 128 without dropout run Kernels/flash_bwd_sm90.cu
/// instead (the same algorithm with its products on warpgroup MMAs; 128 keys, 64 queries per step). All share the pre-pass
/// and conversion kernels (fa_bwd_common.cuh).</summary>
/// <param name="HeadDimBucket">64, 128, 192 or 256: head dims are zero-padded up to the bucket in shared memory.</param>
/// <param name="BFloat16">bf16 (true) or fp16 (false).</param>
/// <param name="Deterministic">dQ through per-split buffers summed in order instead of atomics.</param>
/// <param name="BlockN">Keys per CTA: 64 or 128 for the narrow kernel (128: half the dQ reductions and Q/dO reloads per
/// FLOP; 64 for narrow windows at head dim 64); 64 for the wide one.</param>
/// <param name="BlockM">Queries per step: 64 (measured; 128 is a tuning override for the narrow kernel, +1-2% at head dim 64
/// at 255 registers, bench/NOTES.md).</param>
/// <param name="Dropout">Compile the Philox dropout in (the mask is regenerated, never stored).</param>
/// <param name="Softcap">Compile the tanh score cap in (its derivative enters dS).</param>
/// <param name="Alibi">Compile the ALiBi bias in.</param>
/// <param name="Hopper">The sm_90a kernel (Kernels/flash_bwd_sm90.cu, wgmma).</param>
internal sealed record BackwardVariant(int HeadDimBucket, bool BFloat16, bool Deterministic, int BlockN, int BlockM, bool Dropout = false,
    bool Softcap = false, bool Alibi = false, bool Hopper = false)
{
    /// <summary>FLASHATTN_BWD_SM90=0 keeps every backward on the FlashAttention-2 kernels (for comparison and as a fallback).</summary>
    public static readonly bool HopperEnabled = Environment.GetEnvironmentVariable("FLASHATTN_BWD_SM90") != "0";

    /// <summary>Tests pin the choice for the calls of one async flow (null: <see cref="HopperEnabled"/> decides).</summary>
    internal static readonly AsyncLocal<bool?> HopperPinned = new();

    /// <summary>Whether covered calls take the Hopper kernel now.</summary>
    public static bool UseHopper => HopperPinned.Value ?? HopperEnabled;

    /// <summary>Whether the Hopper backward covers a call: an sm_90 device, head dims up to 128, no dropout, and not a narrow
    /// window at head dim 64 (which keeps flash_bwd.cu's measured 64-key blocks).</summary>
    public static bool HopperCovers(string architecture, int headDim, bool dropout, bool narrowWindow)
    {
        int bucket = ForwardVariant.BucketOf(headDim);
        return architecture == "sm_90a" && bucket <= 128 && !dropout && !(bucket == 64 && narrowWindow);
    }

    /// <summary>The variant a backward call runs: the Hopper kernel where it covers the call and is in use, otherwise
    /// <see cref="For"/>. CudaBackward launches it; the bench counts the tiles it computes.</summary>
    public static BackwardVariant Choose(string architecture, int headDim, bool bfloat16, bool deterministic, bool dropout, bool softcap,
        bool alibi, bool narrowWindow) =>
        UseHopper && HopperCovers(architecture, headDim, dropout, narrowWindow)
            ? ForHopper(headDim, bfloat16, deterministic, softcap, alibi)
            : For(headDim, bfloat16, deterministic, dropout, softcap, alibi, narrowWindow);

    /// <summary>The Hopper kernel's variant: 128 keys per CTA (two warpgroups of 64), 64 queries per step.</summary>
    public static BackwardVariant ForHopper(int headDim, bool bfloat16, bool deterministic, bool softcap = false, bool alibi = false) =>
        new(ForwardVariant.BucketOf(headDim), bfloat16, deterministic, BlockN: 128, BlockM: 64, Dropout: false, softcap, alibi, Hopper: true);

    public const string PrepareKernel = "flash_bwd_prepare", MainKernel = "flash_bwd_kernel", ConvertKernel = "flash_bwd_convert";

    /// <summary>Tuning overrides of the narrow kernel's key-block and query-block sizes (64 or 128), read once; unset
    /// means the measured defaults.</summary>
    public const string BlockNVariable = "FLASHATTN_BWD_BLOCK_N", BlockMVariable = "FLASHATTN_BWD_BLOCK_M";

    private static readonly int? BlockNOverride = ReadBlockOverride(BlockNVariable);
    private static readonly int? BlockMOverride = ReadBlockOverride(BlockMVariable);

    public static BackwardVariant For(int headDim, bool bfloat16, bool deterministic, bool dropout = false, bool softcap = false, bool alibi = false,
        bool narrowWindow = false)
    {
        int bucket = ForwardVariant.BucketOf(headDim);
        // A narrow window (ForwardVariant.IsNarrowWindow) at head dim 64 takes 64-key blocks: a key block then computes 64 fewer
        // query rows of the sliding range, and at 4 warps two CTAs share an SM, so one CTA's K/V load and dK/dV store overlap
        // the other's work (+13% at (256, 256), +22% at (256, 0), +7% at (1024, 0), forward+backward; at head dim 128 it lost,
        // bench/NOTES.md).
        int blockN = bucket == 64 && narrowWindow ? 64 : 128;
        return bucket <= 128
            ? new(bucket, bfloat16, deterministic, BlockNOverride ?? blockN, BlockMOverride ?? 64, dropout, softcap, alibi)
            : new(bucket, bfloat16, deterministic, 64, 64, dropout, softcap, alibi);
    }

    /// <summary>The kernel file: the narrow layout up to head dim 128, the wide one above.</summary>
    public string SourceFile => Hopper ? "flash_bwd_sm90.cu" : IsWide ? "flash_bwd_wide.cu" : "flash_bwd.cu";

    public bool IsWide => HeadDimBucket > 128;

    public int Threads => IsWide || Hopper ? 256 : BlockN / 16 * 32;

    public string Name =>
        $"flash_bwd{(Hopper ? "_sm90" : "")}_hdim{HeadDimBucket}_n{BlockN}_m{BlockM}_{(BFloat16 ? "bf16" : "fp16")}{(Deterministic ? "_deterministic" : "")}{(Dropout ? "_dropout" : "")}" +
        $"{(Softcap ? "_softcap" : "")}{(Alibi ? "_alibi" : "")}";

    /// <summary>K and V tiles, dS^T (and P^T for the wide kernel), then two stages of (Q, dO) tiles with their per-query LSE and D
    /// (the Hopper kernel aligns its tiles to 1024 bytes: 1024 bytes of slack).</summary>
    public int SharedMemoryBytes =>
        (2 * BlockN + 4 * BlockM) * HeadDimBucket * 2 + (IsWide ? 2 : 1) * BlockN * BlockM * 2 + 4 * BlockM * sizeof(float) + (Hopper ? 1024 : 0);

    public IReadOnlyList<string> CompilerDefines =>
    [
        "-DFA_HEAD_DIM=" + HeadDimBucket.ToString(CultureInfo.InvariantCulture), "-DFA_BF16=" + (BFloat16 ? "1" : "0"),
        "-DFA_DETERMINISTIC=" + (Deterministic ? "1" : "0"), "-DFA_BLOCK_N=" + BlockN.ToString(CultureInfo.InvariantCulture),
        "-DFA_BLOCK_M=" + BlockM.ToString(CultureInfo.InvariantCulture), "-DFA_DROPOUT=" + (Dropout ? "1" : "0"),
        "-DFA_SOFTCAP=" + (Softcap ? "1" : "0"), "-DFA_ALIBI=" + (Alibi ? "1" : "0"),
    ];

    private static int? ReadBlockOverride(string variable) =>
        int.TryParse(Environment.GetEnvironmentVariable(variable), out int n) && n is 64 or 128 ? n : null;
}
