using FlashAttn.Cuda;

namespace FlashAttn;

/// <summary>The result of a forward call on CUDA tensors. Owns its device tensors: dispose it (or them) when done.</summary>
/// <typeparam name="T">System.Half or BFloat16.</typeparam>
public sealed class CudaAttentionResult<T> : IDisposable where T : unmanaged
{
    internal CudaAttentionResult(CudaTensor<T> output, CudaTensor<float> logSumExp, DropoutState? dropoutState)
    {
        Output = output;
        LogSumExp = logSumExp;
        DropoutState = dropoutState;
    }

    /// <summary>The attention output, (batch, seqlen_q, heads_q, headdim).</summary>
    public CudaTensor<T> Output { get; }

    /// <summary>fp32 log-sum-exp, (batch, heads_q, seqlen_q); +inf for a row that sees no key.</summary>
    public CudaTensor<float> LogSumExp { get; }

    /// <summary>The Philox state used by dropout; null when dropout is off.</summary>
    public DropoutState? DropoutState { get; }

    /// <summary>Frees the output and log-sum-exp.</summary>
    public void Dispose()
    {
        Output.Dispose();
        LogSumExp.Dispose();
    }
}
