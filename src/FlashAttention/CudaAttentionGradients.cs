using FlashAttn.Cuda;

namespace FlashAttn;

/// <summary>Gradients of q, k, v computed on the GPU. Owns its device tensors: dispose it (or them) when done.</summary>
/// <typeparam name="T">System.Half or BFloat16.</typeparam>
public sealed class CudaAttentionGradients<T> : IDisposable where T : unmanaged
{
    internal CudaAttentionGradients(CudaTensor<T> dq, CudaTensor<T> dk, CudaTensor<T> dv)
    {
        DQ = dq;
        DK = dk;
        DV = dv;
    }

    /// <summary>Gradient of q, shaped like q.</summary>
    public CudaTensor<T> DQ { get; }

    /// <summary>Gradient of k (summed over each GQA group), shaped like k.</summary>
    public CudaTensor<T> DK { get; }

    /// <summary>Gradient of v (summed over each GQA group), shaped like v.</summary>
    public CudaTensor<T> DV { get; }

    /// <summary>Frees the three gradients.</summary>
    public void Dispose()
    {
        DQ.Dispose();
        DK.Dispose();
        DV.Dispose();
    }
}
