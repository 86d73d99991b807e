using System.Runtime.InteropServices;

namespace FlashAttn.Cuda;

/// <summary>Mirror of <c>UnfusedSoftmaxBwdParams</c> in Kernels/unfused_softmax_bwd.cu, field for field (8-byte fields first).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct UnfusedSoftmaxBackwardParams
{
    /// <summary>The forward's (batch, heads_q, seqlen_q, seqlen_k) probabilities, read only.</summary>
    public nint Probabilities;
    /// <summary>dP = dO V^T in the same layout, overwritten by dS = P * (dP - rowsum(P * dP)).</summary>
    public nint Gradients;
    /// <summary>batch * heads_q * seqlen_q.</summary>
    public long Rows;
    public int SeqlenK;
}
