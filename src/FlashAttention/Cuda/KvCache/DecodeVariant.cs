using System.Globalization;

namespace FlashAttn.Cuda;

/// <summary>
/// One compiled specialisation of the split-KV decode kernel (Kernels/flash_decode.cu): 16 packed query rows, 64-key
/// blocks over 4 warps, a STAGES-deep cp.async pipeline of K and V blocks, two resident blocks per SM.
/// </summary>
/// <param name="HeadDimBucket">64, 128 or 256 (head dims are zero-filled up to it in shared memory).</param>
/// <param name="BFloat16">bf16 (true) or fp16 (false).</param>
/// <param name="Stages">Key blocks in the pipeline (all but one in flight).</param>
/// <param name="Softcap">Compile the tanh cap in.</param>
/// <param name="Alibi">Compile the ALiBi bias in.</param>
internal sealed record DecodeVariant(int HeadDimBucket, bool BFloat16, int Stages, bool Softcap, bool Alibi)
{
    public const string KernelName = "flash_decode_kernel";
    public const int Threads = 128, RowsPerTile = 16, BlockN = 64, Warps = 4;

    public static DecodeVariant For(int headDim, bool bfloat16, bool softcap, bool alibi)
    {
        int bucket = headDim <= 64 ? 64 : headDim <= 128 ? 128 : 256;
        // Two resident blocks per SM with 3 stages each (2 at d256, so the tiles fit) beat one block with as many stages
        // as shared memory holds (6 at d128) by 10-70% on the H100 (bench/NOTES.md): a lone block's barrier and compute
        // phases leave its SM without issued loads.
        return new DecodeVariant(bucket, bfloat16, bucket == 256 ? 2 : 3, softcap, alibi);
    }

    /// <summary>Grid rows of a call: each kv head's (query, head-in-group) rows in tiles of <see cref="RowsPerTile"/>.</summary>
    public static long Tiles(Validation.KvCacheShape shape) =>
        (long)shape.HeadsKv * (((long)shape.SeqlenQ * shape.GroupSize + RowsPerTile - 1) / RowsPerTile);

    public string Name => $"flash_decode_hdim{HeadDimBucket}_{(BFloat16 ? "bf16" : "fp16")}{(Softcap ? "_softcap" : "")}{(Alibi ? "_alibi" : "")}";

    /// <summary>The Q tile, then the K/V stages, which the end of the kernel reuses to merge the warps (fp32 rows).</summary>
    public int SharedMemoryBytes
    {
        get
        {
            int stages = Stages * 2 * BlockN * HeadDimBucket * 2;
            int merge = 2 * Warps * RowsPerTile * sizeof(float) + Warps * RowsPerTile * HeadDimBucket * sizeof(float);
            return RowsPerTile * HeadDimBucket * 2 + Math.Max(stages, merge);
        }
    }

    public IReadOnlyList<string> CompilerDefines =>
    [
        Define("FA_HEAD_DIM", HeadDimBucket), Define("FA_STAGES", Stages), Define("FA_BF16", BFloat16 ? 1 : 0),
        Define("FA_SOFTCAP", Softcap ? 1 : 0), Define("FA_ALIBI", Alibi ? 1 : 0),
    ];

    private static string Define(string name, int value) => "-D" + name + "=" + value.ToString(CultureInfo.InvariantCulture);
}
