using System.Runtime.InteropServices;

namespace FlashAttn.Cuda;

/// <summary>Mirror of <c>CacheLayout</c> in Kernels/fa_kvcache.cuh.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct CacheLayoutParams
{
    public nint CacheSeqlens, CacheBatchIndex, BlockTable;
    public long BlockTableBatchStride;
    public int Capacity, CacheBatch, PageSize, SeqlenNew;
}

/// <summary>Mirror of <c>KvCacheAppendParams</c> in Kernels/kvcache_append.cu.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct KvCacheAppendParams
{
    public nint KNew, VNew, KCache, VCache, Q, QRotated, RotaryCos, RotarySin;
    public long KNewBatchStride, KNewRowStride, KNewHeadStride;
    public long VNewBatchStride, VNewRowStride, VNewHeadStride;
    public long KBatchStride, KRowStride, KHeadStride;
    public long VBatchStride, VRowStride, VHeadStride;
    public long QBatchStride, QRowStride, QHeadStride;
    public long RotaryRowStride;
    public CacheLayoutParams Cache;
    public int Batch, SeqlenQ, HeadsQ, HeadsKv, HeadDim;
    public int RotaryDim, SeqlenRo;
    public int Interleaved, QPositionsAdvance;
}

/// <summary>Mirror of <c>FlashDecodeParams</c> in Kernels/flash_decode.cu.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FlashDecodeParams
{
    public nint Q, KCache, VCache, O, Lse, OPartial, LsePartial, AlibiSlopes;
    public long QBatchStride, QRowStride, QHeadStride;
    public long KBatchStride, KRowStride, KHeadStride;
    public long VBatchStride, VRowStride, VHeadStride;
    public long OBatchStride, ORowStride, OHeadStride;
    public long LseBatchStride, LseHeadStride;
    public long AlibiBatchStride;
    public CacheLayoutParams Cache;
    public int Batch, HeadsQ, HeadsKv, HeadDim, SeqlenQ;
    public int WindowLeft, WindowRight;
    public int NumSplits;
    public float ScaleLog2, Scale, SoftcapPre, AlibiFactor;
}

/// <summary>Mirror of <c>DecodeCombineParams</c> in Kernels/decode_combine.cu.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct DecodeCombineParams
{
    public nint OPartial, LsePartial, O, Lse;
    public long OBatchStride, ORowStride, OHeadStride;
    public long LseBatchStride, LseHeadStride;
    public int Batch, HeadsQ, SeqlenQ, HeadDim, NumSplits;
}
