using System.Runtime.InteropServices;

namespace FlashAttn.Cuda;

/// <summary>Mirror of <c>FlashFwdParams</c> in Kernels/fa_params.cuh, field for field (8-byte fields first).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FlashForwardParams
{
    public nint Q, K, V, O, Lse, CuSeqlensQ, CuSeqlensK, AlibiSlopes;
    public long QBatchStride, QRowStride, QHeadStride;
    public long KBatchStride, KRowStride, KHeadStride;
    public long VBatchStride, VRowStride, VHeadStride;
    public long OBatchStride, ORowStride, OHeadStride;
    public long LseBatchStride, LseHeadStride;
    public long AlibiBatchStride;
    public int Batch, HeadsQ, HeadsKv, HeadDim;
    public int SeqlenQ, SeqlenK;
    public int TotalQ, TotalK;
    public int WindowLeft, WindowRight;
    public float ScaleLog2, Scale, SoftcapPre, AlibiFactor;
    public DropoutKernelParams Dropout;
}

/// <summary>Mirror of <c>DropoutParams</c> in Kernels/fa_dropout.cuh.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct DropoutKernelParams
{
    public uint SeedLo, SeedHi, Offset, KeepThreshold;
    public float KeepScale;
    public int Enabled;

    public static DropoutKernelParams From(Dropout.DropoutMask mask) => new()
    {
        SeedLo = mask.Key0, SeedHi = mask.Key1, Offset = mask.Offset, KeepThreshold = mask.KeepThreshold,
        KeepScale = mask.KeepScale, Enabled = mask.Enabled ? 1 : 0,
    };
}

/// <summary>Mirror of <c>CopyHeadsParams</c> in Kernels/copy_heads.cu.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct CopyHeadsParams
{
    public nint Source, Destination;
    public long SourceBatchStride, SourceRowStride, SourceHeadStride;
    public long DestinationBatchStride, DestinationRowStride, DestinationHeadStride;
    public int Batch, Rows, Heads, SourceDim, DestinationDim;
}
