using System.Globalization;

namespace FlashAttn.Cuda;

/// <summary>
/// One compiled specialisation of the FlashAttention-2 forward kernel. The tiling of every head-dim bucket is
/// derived here and nowhere else; each choice is the best of a measured sweep on the H100 (bench/NOTES.md).
/// </summary>
/// <param name="HeadDimBucket">64, 128, 192 or 256: head dims are zero-padded up to the bucket in shared memory.</param>
/// <param name="BFloat16">bf16 (true) or fp16 (false) inputs.</param>
/// <param name="BlockM">Query rows per thread block.</param>
/// <param name="BlockN">Keys per iteration.</param>
/// <param name="Warps">Warps per thread block; each owns BlockM / Warps query rows.</param>
/// <param name="RollQk">Keep QK^T's 64-column chunk loop rolled (fewer registers at large head dims).</param>
/// <param name="Dropout">Compile the Philox dropout (Kernels/fa_dropout.cuh) in; off costs nothing.</param>
/// <param name="Softcap">Compile the tanh score cap in (Kernels/fa_score_mods.cuh).</param>
/// <param name="Alibi">Compile the ALiBi bias in.</param>
/// <param name="Hopper">The sm_90a kernel (Kernels/flash_fwd_sm90.cu: both products on warpgroup MMAs) instead of the
/// FlashAttention-2 one.</param>
/// <param name="MinBlocksPerSm">The Hopper kernel's __launch_bounds__ minimum of CTAs per SM (2: 128 registers a thread,
/// so two CTAs share an SM).</param>
internal sealed record ForwardVariant(int HeadDimBucket, bool BFloat16, int BlockM, int BlockN, int Warps, bool RollQk, bool Dropout = false,
    bool Softcap = false, bool Alibi = false, bool Hopper = false, int MinBlocksPerSm = 1)
{
    public const string KernelName = "flash_fwd_kernel", HopperKernelName = "flash_fwd_sm90_kernel";

    /// <summary>The kernel source file and entry point of this variant.</summary>
    public string SourceFile => Hopper ? "flash_fwd_sm90.cu" : "flash_fwd.cu";

    public string Kernel => Hopper ? HopperKernelName : KernelName;

    /// <summary>On sm_90 GPUs the shapes the Hopper kernel covers go to it; FLASHATTN_FWD_SM90=0 keeps every shape on the
    /// FlashAttention-2 kernel (for comparison and as a fallback). FLASHATTN_FWD_SM90_BLOCK_N (64 or 128) overrides its key
    /// block, for tuning.</summary>
    public static readonly bool HopperEnabled = Environment.GetEnvironmentVariable("FLASHATTN_FWD_SM90") != "0";

    /// <summary>Tests pin the choice for the calls of one async flow (null: <see cref="HopperEnabled"/> decides).</summary>
    internal static readonly AsyncLocal<bool?> HopperPinned = new();

    /// <summary>Whether covered calls take the Hopper kernel now.</summary>
    public static bool UseHopper => HopperPinned.Value ?? HopperEnabled;

    private static readonly int? HopperBlockNOverride =
        int.TryParse(Environment.GetEnvironmentVariable("FLASHATTN_FWD_SM90_BLOCK_N"), out int n) && n is 64 or 128 ? n : null;

    private static readonly int? HopperMinBlocksOverride =
        int.TryParse(Environment.GetEnvironmentVariable("FLASHATTN_FWD_SM90_MIN_BLOCKS"), out int b) && b is 1 or 2 ? b : null;

    /// <summary>Whether the Hopper kernel covers a call: an sm_90 device, any head dim (up to 256), no dropout (softcap and
    /// ALiBi are compile-time variants of it, as of the FlashAttention-2 kernel).</summary>
    public static bool HopperCovers(string architecture, int headDim, bool dropout) =>
        architecture == "sm_90a" && headDim <= 256 && !dropout;

    /// <summary>The Hopper kernel's variant: 128 query rows (two warpgroups of 64), two CTAs per SM (one's softmax overlaps the
    /// other's products), BlockN keys per step: 128 at head dim 64, 64 at 128, where the 128-register cap spills least (64
    /// and one CTA per SM at 192 and 256). The best of the four (BlockN x CTAs per SM) on the H100 at s1k and s4k, causal
    /// or not (bench/NOTES.md). Narrow windows at head dim 64 take 64 query rows (one warpgroup, four CTAs per SM, the same
    /// 128 registers, no spills) and 64 keys: a narrow window's key range slides with the query block, so smaller tiles
    /// compute fewer masked scores at its edges (+9% at (256, 256), +17% at (256, 0)). At head dim 128 the same tiling
    /// spills 200 bytes at four CTAs per SM and loses 7-12% at two, so it keeps 128 rows.
    /// FLASHATTN_FWD_SM90_BLOCK_N and FLASHATTN_FWD_SM90_MIN_BLOCKS override them, for tuning.</summary>
    public static ForwardVariant ForHopper(int headDim, bool bfloat16, bool softcap = false, bool alibi = false, bool narrowWindow = false)
    {
        int bucket = BucketOf(headDim);
        if (narrowWindow && bucket == 64)
            return new(bucket, bfloat16, BlockM: 64, BlockN: HopperBlockNOverride ?? 64, Warps: 4, RollQk: false,
                Softcap: softcap, Alibi: alibi, Hopper: true, MinBlocksPerSm: 2 * (HopperMinBlocksOverride ?? 2));
        // Head dims 192 and 256 hold 96 or 128 O accumulators a thread: one CTA per SM.
        int minBlocks = bucket > 128 ? 1 : HopperMinBlocksOverride ?? 2;
        return new(bucket, bfloat16, BlockM: 128, BlockN: HopperBlockNOverride ?? (bucket == 64 ? 128 : 64), Warps: 8, RollQk: false,
            Softcap: softcap, Alibi: alibi, Hopper: true, MinBlocksPerSm: minBlocks);
    }

    /// <summary>The variant a forward call runs: the Hopper kernel where it covers the call and is in use, otherwise the
    /// FlashAttention-2 kernel (with the narrow-window tiling for narrow windows). CudaForward launches it; the bench counts
    /// the tiles it computes.</summary>
    public static ForwardVariant Choose(string architecture, int headDim, bool bfloat16, bool dropout, bool softcap, bool alibi,
        int windowLeft, int windowRight) =>
        UseHopper && HopperCovers(architecture, headDim, dropout)
            ? ForHopper(headDim, bfloat16, softcap, alibi, IsNarrowWindow(windowLeft, windowRight))
            : For(headDim, bfloat16, dropout, softcap, alibi, IsNarrowWindow(windowLeft, windowRight));

    public static ForwardVariant For(int headDim, bool bfloat16, bool dropout = false, bool softcap = false, bool alibi = false,
        bool narrowWindow = false) => (BucketOf(headDim) switch
    {
        // A narrow window's key range slides with the query block, so a 128-row block computes about 128 more keys per row
        // than its rows see; 64-row blocks of two warps (32 rows each, as before) halve that waste. Measured at head dim 64
        // only: at 128 the same tiling (four warps of 16 rows) gained at (256, 0) and lost elsewhere (bench/NOTES.md).
        64 when narrowWindow => new ForwardVariant(64, bfloat16, BlockM: 64, BlockN: 64, Warps: 2, RollQk: false),
        64 => new ForwardVariant(64, bfloat16, BlockM: 128, BlockN: 64, Warps: 4, RollQk: false),
        128 => new ForwardVariant(128, bfloat16, BlockM: 128, BlockN: 32, Warps: 4, RollQk: false),
        192 => new ForwardVariant(192, bfloat16, BlockM: 128, BlockN: 64, Warps: 8, RollQk: true),
        _ => new ForwardVariant(256, bfloat16, BlockM: 128, BlockN: 64, Warps: 8, RollQk: false),
    }) with { Dropout = dropout, Softcap = softcap, Alibi = alibi };

    /// <summary>Windows spanning at most this many keys (left + right + 1) take the narrow-window tiling;
    /// FLASHATTN_FWD_NARROW_SPAN overrides it (0 turns it off), for tuning.</summary>
    public static readonly int NarrowWindowSpan =
        int.TryParse(Environment.GetEnvironmentVariable("FLASHATTN_FWD_NARROW_SPAN"), out int span) && span >= 0 ? span : 1100;

    /// <summary>Whether a (left, right) window, both sides bounded, is narrow enough for the narrow-window tiling.</summary>
    public static bool IsNarrowWindow(int windowLeft, int windowRight) =>
        windowLeft >= 0 && windowRight >= 0 && (long)windowLeft + windowRight + 1 <= NarrowWindowSpan;

    /// <summary>Name suffix of the narrow-window tilings (64 query rows).</summary>
    private string TilingTag => BlockM == 128 ? "" : $"_m{BlockM}";

    public static int BucketOf(int headDim) => headDim <= 64 ? 64 : headDim <= 128 ? 128 : headDim <= 192 ? 192 : 256;

    /// <summary>flash-attn style name, e.g. flash_fwd_hdim128_bf16.</summary>
    public string Name => Hopper
        ? $"flash_fwd_sm90_hdim{HeadDimBucket}{TilingTag}_n{BlockN}_b{MinBlocksPerSm}_{(BFloat16 ? "bf16" : "fp16")}{ModifierTags}"
        : $"flash_fwd_hdim{HeadDimBucket}{TilingTag}_{(BFloat16 ? "bf16" : "fp16")}{(Dropout ? "_dropout" : "")}{ModifierTags}";

    private string ModifierTags => (Softcap ? "_softcap" : "") + (Alibi ? "_alibi" : "");

    /// <summary>Q, K and V tiles in 16-bit elements (the Hopper kernel aligns them to 1024 bytes: 1024 bytes of slack).</summary>
    public int SharedMemoryBytes => (BlockM + 2 * BlockN) * HeadDimBucket * 2 + (Hopper ? 1024 : 0);

    public int Threads => Warps * 32;

    public IReadOnlyList<string> CompilerDefines => Hopper
        ? [Define("FA_HEAD_DIM", HeadDimBucket), Define("FA_BLOCK_N", BlockN), Define("FA_WARPGROUPS", BlockM / 64), Define("FA_BF16", BFloat16 ? 1 : 0),
            Define("FA_MIN_BLOCKS", MinBlocksPerSm), Define("FA_SOFTCAP", Softcap ? 1 : 0), Define("FA_ALIBI", Alibi ? 1 : 0)]
        :
    [
        Define("FA_HEAD_DIM", HeadDimBucket), Define("FA_BLOCK_M", BlockM), Define("FA_BLOCK_N", BlockN),
        Define("FA_WARPS", Warps), Define("FA_BF16", BFloat16 ? 1 : 0), Define("FA_ROLL_QK", RollQk ? 1 : 0), Define("FA_DROPOUT", Dropout ? 1 : 0),
        Define("FA_SOFTCAP", Softcap ? 1 : 0), Define("FA_ALIBI", Alibi ? 1 : 0),
    ];

    private static string Define(string name, int value) => "-D" + name + "=" + value.ToString(CultureInfo.InvariantCulture);
}
