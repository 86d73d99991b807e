using FlashAttn.Cuda;

namespace FlashAttn;

/// <summary>The result of a forward call on CUDA tensors. Owns its device tensors: dispose it (or them) when done.</summary>
/// <typeparam name="T">System.Half or BFloat16.</typeparam>
public sealed class CudaAttentionResult<T> : IDisposable where T : unmanaged
{
    internal CudaAttentionResult(CudaTensor<T> output, CudaTensor<float> logSumExp, DropoutState? dropoutState,
        CudaTensor<float>? probabilities)
    {
        Output = output;
        LogSumExp = logSumExp;
        DropoutState = dropoutState;
        Probabilities = probabilities;
    }

    /// <summary>The attention output, (batch, seqlen_q, heads_q, headdim).</summary>
    public CudaTensor<T> Output { get; }

    /// <summary>fp32 log-sum-exp, (batch, heads_q, seqlen_q); +inf for a row that sees no key (output 0) and for a row whose
    /// softmax read a NaN or +inf score (output NaN).</summary>
    public CudaTensor<float> LogSumExp { get; }

    /// <summary>The Philox state used by dropout; null when dropout is off.</summary>
    public DropoutState? DropoutState { get; }

    /// <summary>The attention probabilities, null unless <see cref="AttentionOptions.ReturnProbabilities"/> was set: fp32
    /// (batch, heads_q, seqlen_q, seqlen_k), P = exp(logit - LSE) from <see cref="LogSumExp"/>, zero where masked, negated
    /// where dropout dropped the entry (not scaled by 1/(1-p)). O(seqlen^2) memory: a testing aid.</summary>
    public CudaTensor<float>? Probabilities { get; }

    /// <summary>Frees the output, log-sum-exp and probabilities.</summary>
    public void Dispose()
    {
        Output.Dispose();
        LogSumExp.Dispose();
        Probabilities?.Dispose();
    }
}
