using FlashAttn.Cuda;
using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>How q, k and v arrive: separately, packed as qkv, or q with a packed kv.</summary>
internal enum Packing
{
    Separate,
    QkvPacked,
    KvPacked,
}

/// <summary>The element types the kernels take.</summary>
internal enum Element
{
    Float32,
    Float16,
    BFloat16,
}

/// <summary>
/// One attention call through the autograd adapter: what forward was given (packing, options, element type, device) and
/// the dropout state it used, kept for backward. Validation of torch-side properties happens here, before any autograd
/// node exists; shapes are checked by the core's validator.
/// </summary>
internal sealed class AttentionCall
{
    private AttentionCall(Packing packing, AttentionOptions options, Element element, bool onCuda)
    {
        Packing = packing;
        Options = options;
        Element = element;
        OnCuda = onCuda;
    }

    public Packing Packing { get; }

    /// <summary>The options of forward and backward. With dropout on, <see cref="AttentionOptions.DropoutState"/> is always set
    /// (drawn from <see cref="DropoutState.Next"/> when the caller gave none), so backward regenerates forward's mask.</summary>
    public AttentionOptions Options { get; }

    public Element Element { get; }

    public bool OnCuda { get; }

    /// <summary>The number of tensor inputs (qkv: 1, q + kv: 2, q, k, v: 3).</summary>
    public int InputCount => AttentionKernels.InputCount(Packing);

    public torch.ScalarType ScalarType => Element switch
    {
        Element.Float32 => torch.ScalarType.Float32,
        Element.Float16 => torch.ScalarType.Float16,
        _ => torch.ScalarType.BFloat16,
    };

    public static AttentionCall Create(Packing packing, AttentionOptions? options, params ReadOnlySpan<(torch.Tensor? Tensor, string Name)> inputs)
    {
        options ??= AttentionOptions.Default;
        if (options.ReturnProbabilities)
            throw new ArgumentException(
                "ReturnProbabilities is not available through the autograd adapter; call FlashAttn.FlashAttention.Forward on " +
                "System.Numerics.Tensors tensors to get the probabilities.", nameof(options));

        var first = inputs[0].Tensor ?? throw new ArgumentNullException(inputs[0].Name);
        foreach (var (tensor, name) in inputs)
        {
            if (tensor is null)
                throw new ArgumentNullException(name);
            if (tensor.IsInvalid)
                throw new ObjectDisposedException(name, $"{name} has been disposed.");
            int rank = packing switch
            {
                Packing.QkvPacked => 5,
                Packing.KvPacked when name == "kv" => 5,
                _ => 4,
            };
            if (tensor.ndim != rank)
                throw new ArgumentException($"{name} must be {Layout(packing, name)}; got a tensor of shape {ShapeText(tensor)}.", name);
            if (rank == 5 && tensor.shape[2] != (packing == Packing.QkvPacked ? 3 : 2))
                throw new ArgumentException($"{name} must be {Layout(packing, name)}; got a tensor of shape {ShapeText(tensor)}.", name);
            if (tensor.dtype != first.dtype)
                throw new ArgumentException($"{name} is {tensor.dtype} but {inputs[0].Name} is {first.dtype}; all inputs must have one dtype.", name);
            if (tensor.device_type != first.device_type || tensor.device_index != first.device_index)
                throw new ArgumentException($"{name} is on {tensor.device} but {inputs[0].Name} is on {first.device}; all inputs must be on one device.", name);
        }

        string argument = inputs[0].Name;
        bool onCuda;
        switch (first.device_type)
        {
            case DeviceType.CPU:
                onCuda = false;
                break;
            case DeviceType.CUDA:
                onCuda = true;
                int ordinal = CudaDevice.Default.Ordinal;
                if (first.device_index != ordinal)
                    throw new ArgumentException(
                        $"{argument} is on {first.device}, but FlashAttention.NET's CUDA path runs on device {ordinal} " +
                        $"(choose it with the {CudaDevice.DeviceEnvironmentVariable} environment variable).", argument);
                break;
            default:
                throw new NotSupportedException(
                    $"{argument} is on {first.device}; FlashAttention.NET runs on CPU tensors and CUDA tensors only.");
        }

        Element element = first.dtype switch
        {
            torch.ScalarType.Float16 => Element.Float16,
            torch.ScalarType.BFloat16 => Element.BFloat16,
            torch.ScalarType.Float32 when !onCuda => Element.Float32,
            torch.ScalarType.Float32 => throw new NotSupportedException(
                $"{argument} is float32 on {first.device}: the CUDA kernels take fp16 and bf16 only (fp32 accumulation inside). " +
                "Use fp16/bf16 on the GPU (e.g. q.to(torch.bfloat16)), or float32 tensors on the CPU."),
            _ => throw new ArgumentException(
                $"{argument} is {first.dtype}; FlashAttention.NET takes float32, float16 and bfloat16 on the CPU and " +
                "float16 and bfloat16 on CUDA.", argument),
        };
        if (options.DropoutProbability > 0f && options.DropoutState is null)
            options = options with { DropoutState = DropoutState.Next() };
        return new AttentionCall(packing, options, element, onCuda);
    }

    private static string Layout(Packing packing, string name) => (packing, name) switch
    {
        (Packing.QkvPacked, _) => "(batch, seqlen, 3, heads, headdim)",
        (Packing.KvPacked, "kv") => "(batch, seqlen_k, 2, heads_kv, headdim)",
        (_, "q") => "(batch, seqlen_q, heads_q, headdim)",
        _ => "(batch, seqlen_k, heads_kv, headdim)",
    };

    private static string ShapeText(torch.Tensor tensor) => "(" + string.Join(", ", tensor.shape) + ")";
}
