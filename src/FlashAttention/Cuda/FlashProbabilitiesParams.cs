using System.Runtime.InteropServices;

namespace FlashAttn.Cuda;

/// <summary>Mirror of <c>FlashProbsParams</c> in Kernels/flash_probs.cu, field for field (8-byte fields first).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct FlashProbabilitiesParams
{
    public nint Q, K, Lse;
    /// <summary>fp32 slopes on the device, or 0 for no ALiBi.</summary>
    public nint AlibiSlopes;
    /// <summary>The dense (batch, heads_q, seqlen_q, seqlen_k) fp32 output.</summary>
    public nint Probabilities;
    public long QBatchStride, QRowStride, QHeadStride;
    public long KBatchStride, KRowStride, KHeadStride;
    public long LseBatchStride, LseHeadStride;
    /// <summary>0 when one slope per head serves every batch entry.</summary>
    public long AlibiBatchStride;
    public int Batch, HeadsQ, HeadsKv, HeadDim;
    public int SeqlenQ, SeqlenK;
    public int WindowLeft, WindowRight;
    public float Scale, Softcap;
    public DropoutKernelParams Dropout;
}
