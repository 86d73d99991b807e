using System.Runtime.InteropServices;

namespace FlashAttn.Cuda;

/// <summary>Mirror of <c>FlashBwdParams</c> in Kernels/fa_bwd_params.cuh, field for field (8-byte fields first).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FlashBackwardParams
{
    public nint Q, K, V, O, DOut, DQ, DK, DV, Lse, Delta, DQAccum, CuSeqlensQ, CuSeqlensK, AlibiSlopes;
    public long QBatchStride, QRowStride, QHeadStride;
    public long KBatchStride, KRowStride, KHeadStride;
    public long VBatchStride, VRowStride, VHeadStride;
    public long OBatchStride, ORowStride, OHeadStride;
    public long DOutBatchStride, DOutRowStride, DOutHeadStride;
    public long DQBatchStride, DQRowStride, DQHeadStride;
    public long DKBatchStride, DKRowStride, DKHeadStride;
    public long DVBatchStride, DVRowStride, DVHeadStride;
    public long LseBatchStride, LseHeadStride;
    public long DQAccumSplitStride, DQAccumBatchStride, AlibiBatchStride;
    public int Batch, HeadsQ, HeadsKv, HeadDim;
    public int SeqlenQ, SeqlenK;
    public int TotalQ, TotalK;
    public int WindowLeft, WindowRight;
    public int Splits;
    public float Scale, ScaleLog2, SoftcapPre, AlibiFactor;
    public DropoutKernelParams Dropout;
}
