using FlashAttn.Cuda;
using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// One KV-cache attention call through the adapter (flash-attn's <c>flash_attn_with_kvcache</c>): the tensors as given,
/// the options, element type and device. Torch-side properties (null or disposed tensors, devices, dtypes, the int32
/// index tensors, whether the caches can be written in place) are checked here with the argument names of the public
/// entry point; the core's validator checks shapes and, on the CPU, the values of the index tensors.
/// </summary>
internal sealed class KvCacheCall
{
    private KvCacheCall(Element element, bool onCuda, AttentionOptions options, KvCacheOptions cacheOptions)
    {
        Element = element;
        OnCuda = onCuda;
        Options = options;
        CacheOptions = cacheOptions;
    }

    public Element Element { get; }

    public bool OnCuda { get; }

    public AttentionOptions Options { get; }

    public KvCacheOptions CacheOptions { get; }

    public required torch.Tensor Q { get; init; }

    /// <summary>The key cache as the caller gave it: never copied, since the append must land in the caller's memory.</summary>
    public required torch.Tensor KCache { get; init; }

    /// <summary>The value cache as the caller gave it, never copied.</summary>
    public required torch.Tensor VCache { get; init; }

    public torch.Tensor? K { get; init; }

    public torch.Tensor? V { get; init; }

    public torch.Tensor? RotaryCos { get; init; }

    public torch.Tensor? RotarySin { get; init; }

    public torch.Tensor? CacheSeqlens { get; init; }

    public torch.Tensor? CacheBatchIndex { get; init; }

    public torch.Tensor? BlockTable { get; init; }

    public torch.ScalarType ScalarType => Element switch
    {
        Element.Float32 => torch.ScalarType.Float32,
        Element.Float16 => torch.ScalarType.Float16,
        _ => torch.ScalarType.BFloat16,
    };

    /// <summary>Validates the torch-side properties of a call; shapes are left to the core's validator.</summary>
    public static KvCacheCall Create(torch.Tensor q, torch.Tensor kCache, torch.Tensor vCache, torch.Tensor? k, torch.Tensor? v,
        torch.Tensor? rotaryCos, torch.Tensor? rotarySin, torch.Tensor? cacheSeqlens, torch.Tensor? cacheBatchIndex, torch.Tensor? blockTable,
        AttentionOptions? options, KvCacheOptions? cacheOptions)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(kCache);
        ArgumentNullException.ThrowIfNull(vCache);
        (torch.Tensor? Tensor, string Name)[] values =
        [
            (q, nameof(q)), (kCache, nameof(kCache)), (vCache, nameof(vCache)), (k, nameof(k)), (v, nameof(v)),
            (rotaryCos, nameof(rotaryCos)), (rotarySin, nameof(rotarySin)),
        ];
        (torch.Tensor? Tensor, string Name)[] indices =
            [(cacheSeqlens, nameof(cacheSeqlens)), (cacheBatchIndex, nameof(cacheBatchIndex)), (blockTable, nameof(blockTable))];

        foreach (var (tensor, name) in values.Concat(indices))
        {
            if (tensor is null)
                continue;
            if (tensor.IsInvalid)
                throw new ObjectDisposedException(name, $"{name} has been disposed.");
            if (tensor.device_type != q.device_type || tensor.device_index != q.device_index)
                throw new ArgumentException($"{name} is on {tensor.device} but q is on {q.device}; every tensor must be on q's device.", name);
        }
        foreach (var (tensor, name) in values)
            if (tensor is not null && tensor.dtype != q.dtype)
                throw new ArgumentException($"{name} is {tensor.dtype} but q is {q.dtype}; the caches, k, v and the rotary tables must have q's dtype.", name);
        foreach (var (tensor, name) in indices)
            if (tensor is not null && tensor.dtype != torch.ScalarType.Int32)
                throw new ArgumentException($"{name} is {tensor.dtype}; it must be int32 as in flash-attn (convert with .to(torch.int32)).", name);

        bool onCuda = q.device_type switch
        {
            DeviceType.CPU => false,
            DeviceType.CUDA => true,
            _ => throw new NotSupportedException($"q is on {q.device}; FlashAttention.NET runs on CPU tensors and CUDA tensors only."),
        };
        if (onCuda && q.device_index != CudaDevice.Default.Ordinal)
            throw new ArgumentException(
                $"q is on {q.device}, but FlashAttention.NET's CUDA path runs on device {CudaDevice.Default.Ordinal} " +
                $"(choose it with the {CudaDevice.DeviceEnvironmentVariable} environment variable).", nameof(q));
        Element element = q.dtype switch
        {
            torch.ScalarType.Float16 => Element.Float16,
            torch.ScalarType.BFloat16 => Element.BFloat16,
            torch.ScalarType.Float32 when !onCuda => Element.Float32,
            torch.ScalarType.Float32 => throw new NotSupportedException(
                $"q is float32 on {q.device}: the CUDA kernels take fp16 and bf16 only (fp32 accumulation inside). " +
                "Use fp16/bf16 on the GPU (e.g. q.to(torch.bfloat16)), or float32 tensors on the CPU."),
            _ => throw new ArgumentException(
                $"q is {q.dtype}; FlashAttention.NET takes float32, float16 and bfloat16 on the CPU and float16 and bfloat16 on CUDA.", nameof(q)),
        };

        if (q.ndim != 4)
            throw new ArgumentException($"q must be (batch, seqlen_q, heads_q, headdim); got a tensor of shape {ShapeText(q)}.", nameof(q));
        // The CPU path takes these as spans, where an empty one means "absent": a wrong length must not pass for that.
        PerSequence(cacheSeqlens, nameof(cacheSeqlens), q.shape[0]);
        PerSequence(cacheBatchIndex, nameof(cacheBatchIndex), q.shape[0]);
        bool appends = k is not null || v is not null;
        Writable(kCache, nameof(kCache), appends);
        Writable(vCache, nameof(vCache), appends);

        return new KvCacheCall(element, onCuda, options ?? AttentionOptions.Default, cacheOptions ?? KvCacheOptions.Default)
        {
            Q = q,
            KCache = kCache,
            VCache = vCache,
            K = k,
            V = v,
            RotaryCos = rotaryCos,
            RotarySin = rotarySin,
            CacheSeqlens = cacheSeqlens,
            CacheBatchIndex = cacheBatchIndex,
            BlockTable = blockTable,
        };
    }

    private static void PerSequence(torch.Tensor? tensor, string name, long batch)
    {
        if (tensor is not null && (tensor.ndim != 1 || tensor.shape[0] != batch))
            throw new ArgumentException($"{name} must be a 1-D int32 tensor of batch = {batch} entries (one per sequence); got shape {ShapeText(tensor)}.",
                name);
    }

    /// <summary>
    /// The caches are read and (with k / v) written where they are, through their strides: a layout the kernels cannot address
    /// would need a copy, and an append into a copy would be lost, so it is refused, as flash-attn refuses it. A cache autograd
    /// tracks is refused when appending, as torch refuses in-place changes to it.
    /// </summary>
    private static void Writable(torch.Tensor cache, string name, bool appends)
    {
        if (!TorchTensors.HasKernelLayout(cache))
            throw new ArgumentException(
                $"{name} has shape {ShapeText(cache)} and strides ({string.Join(", ", cache.stride())}), which the kernels cannot address in " +
                "place: the last dimension (headdim) must have stride 1 and no two elements may share memory. The cache is never copied " +
                $"(the append must land in your tensor); allocate it dense once, e.g. {name} = {name}.contiguous().", name);
        if (appends && cache.requires_grad)
            throw new ArgumentException(
                $"{name} requires grad, but appending k / v writes it in place, outside autograd, which torch does not allow for a tensor " +
                $"autograd tracks. Keep the cache out of autograd (allocate it under torch.no_grad(), or pass {name}.detach(), which shares " +
                "its memory).", name);
    }

    private static string ShapeText(torch.Tensor tensor) => "(" + string.Join(", ", tensor.shape) + ")";
}
