using System.Runtime.InteropServices;

namespace FlashAttn.Cuda;

/// <summary>Mirror of <c>UnfusedSoftmaxParams</c> in Kernels/unfused_softmax.cu, field for field (8-byte fields first).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct UnfusedSoftmaxParams
{
    /// <summary>The (batch, heads_q, seqlen_q, seqlen_k) scores, overwritten by P.</summary>
    public nint Scores;
    public nint Lse;
    public long LseBatchStride, LseHeadStride;
    /// <summary>batch * heads_q * seqlen_q.</summary>
    public long Rows;
    public int Heads, SeqlenQ, SeqlenK;
    public int WindowLeft, WindowRight;
}
