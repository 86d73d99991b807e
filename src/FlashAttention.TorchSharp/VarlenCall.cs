using FlashAttn.Cuda;
using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// One variable-length attention call through the autograd adapter (flash-attn's <c>flash_attn_varlen_*_func</c>): the
/// packing, options, element type and device, the maximum sequence lengths, and on the CPU the cumulative offsets read
/// to the host once. Torch-side properties (ranks, dtypes, devices, the cu_seqlens tensors) are checked here, before any
/// autograd node exists, with the argument names of the public entry point; the core's validator checks the rest.
/// </summary>
internal sealed class VarlenCall
{
    private VarlenCall(Packing packing, AttentionOptions options, Element element, bool onCuda, int maxSeqlenQ, int maxSeqlenK,
        int[]? hostCuSeqlensQ, int[]? hostCuSeqlensK)
    {
        Packing = packing;
        Options = options;
        Element = element;
        OnCuda = onCuda;
        MaxSeqlenQ = maxSeqlenQ;
        MaxSeqlenK = maxSeqlenK;
        HostCuSeqlensQ = hostCuSeqlensQ;
        HostCuSeqlensK = hostCuSeqlensK;
    }

    public Packing Packing { get; }

    /// <summary>The options of forward and backward; with dropout on, <see cref="AttentionOptions.DropoutState"/> is always
    /// set (drawn from <see cref="DropoutState.Next"/> when the caller gave none), so backward regenerates forward's mask.</summary>
    public AttentionOptions Options { get; }

    public Element Element { get; }

    public bool OnCuda { get; }

    public int MaxSeqlenQ { get; }

    public int MaxSeqlenK { get; }

    /// <summary>CPU tensors: cu_seqlens_q as read when the call was made (forward and backward use this copy). Null on CUDA,
    /// where the offsets stay in device memory and are never read back (as in flash-attn).</summary>
    public int[]? HostCuSeqlensQ { get; }

    /// <summary>CPU tensors: cu_seqlens_k as read when the call was made; null on CUDA.</summary>
    public int[]? HostCuSeqlensK { get; }

    /// <summary>The log-sum-exp forward produced, (heads_q, total_q) fp32, for the <c>...WithLse</c> entry points.</summary>
    public torch.Tensor? LogSumExp { get; set; }

    /// <summary>The number of tensor inputs (qkv: 1, q + kv: 2, q, k, v: 3).</summary>
    public int InputCount => AttentionKernels.InputCount(Packing);

    public torch.ScalarType ScalarType => Element switch
    {
        Element.Float32 => torch.ScalarType.Float32,
        Element.Float16 => torch.ScalarType.Float16,
        _ => torch.ScalarType.BFloat16,
    };

    /// <summary>Validates a call and reads the CPU offsets. <paramref name="inputs"/> are q, k, v / qkv / q, kv with their names.</summary>
    public static VarlenCall Create(Packing packing, AttentionOptions? options, (torch.Tensor? Tensor, string Name) cuSeqlensQ,
        (torch.Tensor? Tensor, string Name) cuSeqlensK, (int Value, string Name) maxSeqlenQ, (int Value, string Name) maxSeqlenK,
        params ReadOnlySpan<(torch.Tensor? Tensor, string Name)> inputs)
    {
        options ??= AttentionOptions.Default;
        if (options.ReturnProbabilities)
            throw new ArgumentException(
                "ReturnProbabilities is not available through the autograd adapter (flash-attn's return_attn_probs S_dmask); use the " +
                "...WithLse entry points for the log-sum-exp, or call FlashAttn.FlashAttention.ForwardVarlen on System.Numerics.Tensors " +
                "tensors.", nameof(options));

        var first = inputs[0].Tensor ?? throw new ArgumentNullException(inputs[0].Name);
        string firstName = inputs[0].Name;
        foreach (var (tensor, name) in inputs)
        {
            if (tensor is null)
                throw new ArgumentNullException(name);
            if (tensor.IsInvalid)
                throw new ObjectDisposedException(name, $"{name} has been disposed.");
            var (rank, packed) = Expected(packing, name);
            if (tensor.ndim != rank || (packed > 0 && tensor.shape[1] != packed))
                throw new ArgumentException($"{name} must be {Layout(packing, name)}; got a tensor of shape {ShapeText(tensor)}.", name);
            if (tensor.dtype != first.dtype)
                throw new ArgumentException($"{name} is {tensor.dtype} but {firstName} is {first.dtype}; all inputs must have one dtype.", name);
            if (tensor.device_type != first.device_type || tensor.device_index != first.device_index)
                throw new ArgumentException($"{name} is on {tensor.device} but {firstName} is on {first.device}; all inputs must be on one device.", name);
        }
        CheckHeads(packing, inputs);

        bool onCuda = first.device_type switch
        {
            DeviceType.CPU => false,
            DeviceType.CUDA => true,
            _ => throw new NotSupportedException(
                $"{firstName} is on {first.device}; FlashAttention.NET runs on CPU tensors and CUDA tensors only."),
        };
        if (onCuda && first.device_index != CudaDevice.Default.Ordinal)
            throw new ArgumentException(
                $"{firstName} is on {first.device}, but FlashAttention.NET's CUDA path runs on device {CudaDevice.Default.Ordinal} " +
                $"(choose it with the {CudaDevice.DeviceEnvironmentVariable} environment variable).", firstName);

        Element element = first.dtype switch
        {
            torch.ScalarType.Float16 => Element.Float16,
            torch.ScalarType.BFloat16 => Element.BFloat16,
            torch.ScalarType.Float32 when !onCuda => Element.Float32,
            torch.ScalarType.Float32 => throw new NotSupportedException(
                $"{firstName} is float32 on {first.device}: the CUDA kernels take fp16 and bf16 only (fp32 accumulation inside). " +
                "Use fp16/bf16 on the GPU (e.g. q.to(torch.bfloat16)), or float32 tensors on the CPU."),
            _ => throw new ArgumentException(
                $"{firstName} is {first.dtype}; FlashAttention.NET takes float32, float16 and bfloat16 on the CPU and " +
                "float16 and bfloat16 on CUDA.", firstName),
        };

        // The token counts: q's (or qkv's) first dimension, and k's (kv's, qkv's) first dimension.
        long totalQ = first.shape[0];
        long totalK = inputs[packing == Packing.Separate ? 1 : inputs.Length - 1].Tensor!.shape[0];
        var cuQ = CheckOffsets(cuSeqlensQ, first, firstName);
        var cuK = CheckOffsets(cuSeqlensK, first, firstName);
        if (cuK.shape[0] != cuQ.shape[0])
            throw new ArgumentException($"{cuSeqlensK.Name} has {cuK.shape[0]} entries but {cuSeqlensQ.Name} has {cuQ.shape[0]}; both hold " +
                                        "batch + 1 cumulative offsets.", cuSeqlensK.Name);
        CheckMaximum(maxSeqlenQ, totalQ);
        CheckMaximum(maxSeqlenK, totalK);

        int[]? hostQ = null, hostK = null;
        if (!onCuda)
        {
            hostQ = ReadOffsets(cuQ, cuSeqlensQ.Name, totalQ, maxSeqlenQ);
            hostK = ReferenceEquals(cuQ, cuK) ? hostQ : ReadOffsets(cuK, cuSeqlensK.Name, totalK, maxSeqlenK);
        }

        if (options.DropoutProbability > 0f && options.DropoutState is null)
            options = options with { DropoutState = DropoutState.Next() };
        return new VarlenCall(packing, options, element, onCuda, maxSeqlenQ.Value, maxSeqlenK.Value, hostQ, hostK);
    }

    /// <summary>The rank of an input and, for a packed one, the length its dimension 1 must have (0: not packed).</summary>
    private static (int Rank, int Packed) Expected(Packing packing, string name) => (packing, name) switch
    {
        (Packing.QkvPacked, _) => (4, 3),
        (Packing.KvPacked, "kv") => (4, 2),
        _ => (3, 0),
    };

    /// <summary>Head dims, k/v shapes and the GQA ratio, named after the public arguments (the core names its own views).</summary>
    private static void CheckHeads(Packing packing, ReadOnlySpan<(torch.Tensor? Tensor, string Name)> inputs)
    {
        var (q, qName) = inputs[0];
        var (kv, kvName) = inputs[^1];
        long headDim = q!.shape[^1];
        if (headDim < 1 || headDim > 256)
            throw new ArgumentException($"{qName} has head dim {headDim}; flash attention takes head dims 1..256.", qName);
        if (packing == Packing.QkvPacked)
            return;
        if (packing == Packing.Separate)
        {
            var (k, kName) = inputs[1];
            var (v, vName) = inputs[2];
            if (!k!.shape.SequenceEqual(v!.shape))
                throw new ArgumentException($"{vName} has shape {ShapeText(v)} but must match {kName}'s shape {ShapeText(k)}.", vName);
            kv = k;
            kvName = kName;
        }
        long headsQ = q.shape[1], headsKv = kv!.shape[^2];
        if (kv.shape[^1] != headDim)
            throw new ArgumentException($"{kvName} has head dim {kv.shape[^1]} but {qName} has {headDim}; they must match.", kvName);
        if (headsKv == 0 || headsQ % headsKv != 0)
            throw new ArgumentException($"{kvName} has {headsKv} heads, which must divide {qName}'s {headsQ} heads (MQA/GQA).", kvName);
    }

    /// <summary>cu_seqlens as flash-attn requires it: a 1-D int32 tensor of batch + 1 entries on q's device.</summary>
    private static torch.Tensor CheckOffsets((torch.Tensor? Tensor, string Name) offsets, torch.Tensor first, string firstName)
    {
        var (cu, name) = offsets;
        if (cu is null)
            throw new ArgumentNullException(name);
        if (cu.IsInvalid)
            throw new ObjectDisposedException(name, $"{name} has been disposed.");
        if (cu.dtype != torch.ScalarType.Int32)
            throw new ArgumentException($"{name} is {cu.dtype}; cu_seqlens must be int32 as in flash-attn (convert with .to(torch.int32)).", name);
        if (cu.ndim != 1 || cu.shape[0] < 1)
            throw new ArgumentException($"{name} has shape {ShapeText(cu)}; it must be a 1-D tensor of batch + 1 cumulative offsets " +
                                        "(0, ..., total), as FlashPadding.Unpad returns it.", name);
        if (cu.device_type != first.device_type || cu.device_index != first.device_index)
            throw new ArgumentException($"{name} is on {cu.device} but {firstName} is on {first.device}; cu_seqlens must be on the inputs' device.",
                name);
        return cu;
    }

    private static void CheckMaximum((int Value, string Name) maximum, long total)
    {
        if (maximum.Value < 0 || maximum.Value > total)
            throw new ArgumentException($"{maximum.Name} is {maximum.Value}; it must be the longest sequence, in [0, {total}] (the token count).",
                maximum.Name);
    }

    /// <summary>Reads CPU offsets to the host and checks them: 0 first, non-decreasing, the token count last, no sequence
    /// longer than the maximum.</summary>
    private static int[] ReadOffsets(torch.Tensor cu, string name, long total, (int Value, string Name) maximum)
    {
        var host = new int[cu.shape[0]];
        TorchTensors.ReadSpan<int>(cu).FlattenTo(host);
        if (host[0] != 0)
            throw new ArgumentException($"{name} must start at 0; got {host[0]}.", name);
        for (int b = 0; b + 1 < host.Length; b++)
        {
            long length = (long)host[b + 1] - host[b];
            if (length < 0)
                throw new ArgumentException($"{name} must be non-decreasing; entry {b + 1} ({host[b + 1]}) is below entry {b} ({host[b]}).", name);
            if (length > maximum.Value)
                throw new ArgumentException($"{maximum.Name} is {maximum.Value} but sequence {b} has {length} tokens; pass the longest sequence length.",
                    maximum.Name);
        }
        if (host[^1] != total)
            throw new ArgumentException($"{name} ends at {host[^1]} but the inputs hold {total} tokens; the last offset must equal the token count.",
                name);
        return host;
    }

    private static string Layout(Packing packing, string name) => (packing, name) switch
    {
        (Packing.QkvPacked, _) => "(total, 3, heads, headdim)",
        (Packing.KvPacked, "kv") => "(total_k, 2, heads_kv, headdim)",
        (_, "q") => "(total_q, heads_q, headdim)",
        _ => "(total_k, heads_kv, headdim)",
    };

    private static string ShapeText(torch.Tensor tensor) => "(" + string.Join(", ", tensor.shape) + ")";
}
