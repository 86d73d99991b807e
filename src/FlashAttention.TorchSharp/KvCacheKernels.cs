using System.Numerics.Tensors;
using FlashAttn.Cuda;
using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// Runs the core's KV-cache attention over torch tensors, outside autograd. CPU tensors go through
/// <see cref="FlashAttention.ForwardWithKvCache{T}(ReadOnlyTensorSpan{T}, TensorSpan{T}, TensorSpan{T}, ReadOnlyTensorSpan{T}, ReadOnlyTensorSpan{T}, ReadOnlySpan{int}, ReadOnlySpan{int}, ReadOnlyTensorSpan{int}, ReadOnlyTensorSpan{T}, ReadOnlyTensorSpan{T}, AttentionOptions?, KvCacheOptions?, CancellationToken)"/>
/// with the caches as writable spans over the torch tensors' own memory and the index tensors read to the host; the results
/// are copied into new torch tensors. CUDA tensors are wrapped as <see cref="CudaTensor{T}"/> views (index tensors stay on
/// the device, never read back) and the kernels write straight into torch-allocated O and LSE on the legacy default stream,
/// libtorch's stream.
/// </summary>
internal static class KvCacheKernels
{
    /// <summary>O (shaped like q, q's dtype) and, when <paramref name="withLse"/>, the fp32 LSE (batch, heads_q, seqlen_q),
    /// new torch tensors on q's device that do not require grad.</summary>
    public static (torch.Tensor Output, torch.Tensor? LogSumExp) Forward(KvCacheCall call, bool withLse) => call.Element switch
    {
        Element.Float32 => Forward<float>(call, withLse),
        Element.Float16 => Forward<Half>(call, withLse),
        _ => Forward<BFloat16>(call, withLse),
    };

    private static (torch.Tensor Output, torch.Tensor? LogSumExp) Forward<T>(KvCacheCall call, bool withLse) where T : unmanaged
    {
        // Inference only: nothing here (copies, allocations) may become part of a graph, whatever the inputs require.
        using var noGrad = torch.no_grad();
        var copies = new List<torch.Tensor>();
        torch.Tensor? Dense(torch.Tensor? tensor)
        {
            if (tensor is null)
                return null;
            var dense = TorchTensors.MaybeContiguous(tensor);
            if (!ReferenceEquals(dense, tensor))
                copies.Add(dense);
            return dense;
        }

        try
        {
            // Read-only inputs may be copied (flash-attn's maybe_contiguous); the caches never are (KvCacheCall checked them).
            var inputs = new DenseInputs(Dense(call.Q)!, Dense(call.K), Dense(call.V), Dense(call.RotaryCos), Dense(call.RotarySin),
                Dense(call.CacheSeqlens), Dense(call.CacheBatchIndex), Dense(call.BlockTable));
            return call.OnCuda ? OnCuda<T>(call, inputs, withLse) : OnCpu<T>(call, inputs, withLse);
        }
        catch (ArgumentException e) when (e.ParamName is "kNew" or "vNew")
        {
            // The core names the appended tensors after its own parameters; the caller passed them as k and v.
            string name = e.ParamName == "kNew" ? "k" : "v";
            string suffix = $" (Parameter '{e.ParamName}')";
            string message = e.Message.EndsWith(suffix, StringComparison.Ordinal) ? e.Message[..^suffix.Length] : e.Message;
            throw new ArgumentException(message, name, e);
        }
        finally
        {
            // On CUDA the kernels may still be reading these: torch's caching allocator hands the memory out again only to work
            // queued after them on the same (legacy) stream.
            copies.ForEach(copy => copy.Dispose());
        }
    }

    private static (torch.Tensor Output, torch.Tensor? LogSumExp) OnCpu<T>(KvCacheCall call, DenseInputs x, bool withLse) where T : unmanaged
    {
        int[]? cacheSeqlens = HostInts(x.CacheSeqlens), cacheBatchIndex = HostInts(x.CacheBatchIndex);
        var result = FlashAttention.ForwardWithKvCache(TorchTensors.ReadSpan<T>(x.Q), TorchTensors.WriteSpan<T>(call.KCache),
            TorchTensors.WriteSpan<T>(call.VCache), Span<T>(x.K), Span<T>(x.V), cacheSeqlens, cacheBatchIndex, Span<int>(x.BlockTable),
            Span<T>(x.RotaryCos), Span<T>(x.RotarySin), call.Options, call.CacheOptions);
        var output = TorchTensors.ToTorch(result.Output, call.ScalarType);
        try
        {
            return (output, withLse ? TorchTensors.ToTorch(result.LogSumExp, torch.ScalarType.Float32) : null);
        }
        catch
        {
            output.Dispose();
            throw;
        }

        static ReadOnlyTensorSpan<TE> Span<TE>(torch.Tensor? tensor) where TE : unmanaged =>
            tensor is null ? default : TorchTensors.ReadSpan<TE>(tensor);
    }

    /// <summary>A CPU int32 vector read once to the host (the core checks the values before it writes to the cache).</summary>
    private static int[]? HostInts(torch.Tensor? tensor)
    {
        if (tensor is null)
            return null;
        var host = new int[checked((int)tensor.numel())];
        TorchTensors.ReadSpan<int>(tensor).FlattenTo(host);
        return host;
    }

    private static (torch.Tensor Output, torch.Tensor? LogSumExp) OnCuda<T>(KvCacheCall call, DenseInputs x, bool withLse) where T : unmanaged
    {
        var q = x.Q;
        torch.Tensor? output = null, logSumExp = null;
        try
        {
            output = torch.empty(q.shape, q.dtype, q.device);
            if (withLse)
                logSumExp = torch.empty([q.shape[0], q.shape[2], q.shape[1]], torch.ScalarType.Float32, q.device);
            using var qView = TorchTensors.CudaView<T>(q);
            using var kCacheView = TorchTensors.CudaView<T>(call.KCache);
            using var vCacheView = TorchTensors.CudaView<T>(call.VCache);
            using var outputView = TorchTensors.CudaView<T>(output);
            using var lseView = View<float>(logSumExp);
            using var kView = View<T>(x.K);
            using var vView = View<T>(x.V);
            using var seqlensView = View<int>(x.CacheSeqlens);
            using var batchIndexView = View<int>(x.CacheBatchIndex);
            using var blockTableView = View<int>(x.BlockTable);
            using var cosView = View<T>(x.RotaryCos);
            using var sinView = View<T>(x.RotarySin);
            FlashAttention.ForwardWithKvCacheInto(qView, kCacheView, vCacheView, outputView, lseView, kView, vView, seqlensView, batchIndexView,
                blockTableView, cosView, sinView, call.Options, call.CacheOptions, CudaStream.Legacy);
            return (output, logSumExp);
        }
        catch
        {
            output?.Dispose();
            logSumExp?.Dispose();
            throw;
        }

        static CudaTensor<TE>? View<TE>(torch.Tensor? tensor) where TE : unmanaged => tensor is null ? null : TorchTensors.CudaView<TE>(tensor);
    }

    /// <summary>The read-only inputs after <see cref="TorchTensors.MaybeContiguous"/>; absent ones null.</summary>
    private sealed record DenseInputs(torch.Tensor Q, torch.Tensor? K, torch.Tensor? V, torch.Tensor? RotaryCos, torch.Tensor? RotarySin,
        torch.Tensor? CacheSeqlens, torch.Tensor? CacheBatchIndex, torch.Tensor? BlockTable);
}
