using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// flash-attn's functions over TorchSharp tensors, differentiable: the result takes part in autograd, so
/// <c>loss.backward()</c> runs our backward (which recomputes the attention probabilities from the saved log-sum-exp).
/// The KV-cache functions (<see cref="AttentionWithKvCache"/>) are the exception: inference only, outside autograd.
/// </summary>
/// <remarks>
/// <para><b>Devices and dtypes.</b> CUDA tensors in float16 or bfloat16 run on our FlashAttention-2 kernels; CPU tensors in
/// float32, float16 or bfloat16 run on the CPU path. float32 on CUDA is refused (use fp16/bf16 on the GPU); other devices
/// and dtypes are refused. Inputs whose last dimension is not contiguous are copied first (flash-attn's
/// <c>maybe_contiguous</c>); every other stride is read as it is, so slices of a projection need no copy.</para>
/// <para><b>Streams.</b> TorchSharp exposes no current-stream handle, and libtorch queues its work on the legacy default
/// stream unless told otherwise; our kernels are launched on that same stream, so they are ordered with libtorch's work
/// before and after them without any synchronisation, and memory torch frees after the call is only reused once our
/// kernels are done. Do not run this adapter while libtorch is made to use another stream (a non-default
/// <c>CUDAStreamGuard</c> in native code): nothing would order the two.</para>
/// <para><b>Memory.</b> Outputs, log-sum-exp and gradients are allocated by torch (its caching allocator owns them); q, k
/// and v are read in place through their data pointers.</para>
/// <para><b>Dropout.</b> The mask comes from our counter-based Philox generator, not from torch's: set
/// <see cref="AttentionOptions.DropoutState"/> for a reproducible mask, otherwise each call draws a fresh state
/// (<see cref="DropoutState.Next"/>). Backward regenerates the same mask, on the CPU and on CUDA alike.</para>
/// <para><b>Errors in backward.</b> Backward runs inside libtorch's autograd engine, where a .NET exception cannot travel;
/// a failure there makes <c>loss.backward()</c> throw libtorch's "invalid gradient" error, and the original exception is
/// in <see cref="LastBackwardException"/> (and written to standard error).</para>
/// </remarks>
public static partial class FlashAttentionTorch
{
    private static Exception? _lastBackwardException;

    /// <summary>
    /// Attention over separate q, k, v (flash-attn's <c>flash_attn_func</c>), differentiable.
    /// </summary>
    /// <param name="q">(batch, seqlen_q, heads_q, headdim); headdim 1..256.</param>
    /// <param name="k">(batch, seqlen_k, heads_kv, headdim); heads_kv divides heads_q (MQA/GQA).</param>
    /// <param name="v">Same shape as k.</param>
    /// <param name="options">Causal, scale, dropout, window, softcap, ALiBi, deterministic (flash-attn's keyword
    /// arguments); null for the defaults. <see cref="AttentionOptions.ReturnProbabilities"/> is not available here.</param>
    /// <returns>The output, (batch, seqlen_q, heads_q, headdim), on q's device in q's dtype.</returns>
    /// <exception cref="ArgumentException">Mismatched shapes, dtypes or devices, or an unsupported dtype.</exception>
    /// <exception cref="NotSupportedException">float32 on CUDA, or a device other than CPU and CUDA.</exception>
    public static torch.Tensor Attention(torch.Tensor q, torch.Tensor k, torch.Tensor v, AttentionOptions? options = null)
    {
        var call = AttentionCall.Create(Packing.Separate, options, (q, nameof(q)), (k, nameof(k)), (v, nameof(v)));
        return AttentionFunction.apply(q, k, v, call);
    }

    /// <summary>
    /// Attention over a packed qkv tensor (flash-attn's <c>flash_attn_qkvpacked_func</c>), differentiable; q, k and v are
    /// read in place through the packed tensor's strides and the gradient comes back packed the same way.
    /// </summary>
    /// <param name="qkv">(batch, seqlen, 3, heads, headdim).</param>
    /// <param name="options">Attention options; null for the defaults.</param>
    /// <returns>The output, (batch, seqlen, heads, headdim).</returns>
    /// <exception cref="ArgumentException">A shape other than (batch, seqlen, 3, heads, headdim), or an unsupported dtype.</exception>
    /// <exception cref="NotSupportedException">float32 on CUDA, or another device.</exception>
    public static torch.Tensor AttentionQkvPacked(torch.Tensor qkv, AttentionOptions? options = null)
    {
        var call = AttentionCall.Create(Packing.QkvPacked, options, (qkv, nameof(qkv)));
        return AttentionFunction.apply(qkv, call);
    }

    /// <summary>
    /// Attention of q over a packed kv tensor (flash-attn's <c>flash_attn_kvpacked_func</c>), differentiable.
    /// </summary>
    /// <param name="q">(batch, seqlen_q, heads_q, headdim).</param>
    /// <param name="kv">(batch, seqlen_k, 2, heads_kv, headdim); heads_kv divides heads_q.</param>
    /// <param name="options">Attention options; null for the defaults.</param>
    /// <returns>The output, (batch, seqlen_q, heads_q, headdim).</returns>
    /// <exception cref="ArgumentException">Mismatched shapes, dtypes or devices, or an unsupported dtype.</exception>
    /// <exception cref="NotSupportedException">float32 on CUDA, or another device.</exception>
    public static torch.Tensor AttentionKvPacked(torch.Tensor q, torch.Tensor kv, AttentionOptions? options = null)
    {
        var call = AttentionCall.Create(Packing.KvPacked, options, (q, nameof(q)), (kv, nameof(kv)));
        return AttentionFunction.apply(q, kv, call);
    }

    /// <summary>
    /// The exception of the most recent failed backward of this adapter (process-wide), or null. A backward runs inside
    /// libtorch's autograd engine, which a .NET exception cannot cross: when ours fails (e.g. CUDA out of memory),
    /// <c>loss.backward()</c> throws libtorch's "returned an invalid gradient" error and the cause is kept here.
    /// </summary>
    public static Exception? LastBackwardException => Volatile.Read(ref _lastBackwardException);

    /// <summary>Forgets <see cref="LastBackwardException"/> (e.g. before a backward whose outcome you want to inspect).</summary>
    public static void ClearLastBackwardException() => Volatile.Write(ref _lastBackwardException, null);

    internal static void RecordBackwardFailure(Exception exception)
    {
        Volatile.Write(ref _lastBackwardException, exception);
        try
        {
            string message = exception.Message.Split('\n', 2)[0].Trim();
            Console.Error.WriteLine($"FlashAttention.TorchSharp: backward failed ({exception.GetType().Name}: {message}); libtorch reports it as an " +
                                    "invalid gradient. The full exception is in FlashAttentionTorch.LastBackwardException.");
        }
        catch (IOException)
        {
            // Standard error is gone; the exception is still in LastBackwardException.
        }
    }
}
