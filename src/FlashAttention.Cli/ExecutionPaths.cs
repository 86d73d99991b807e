using System.Numerics.Tensors;

namespace FlashAttn.Cli;

/// <summary>One way of running attention that `check` verifies and `bench` times.</summary>
internal interface IExecutionPath
{
    /// <summary>Short name for tables and results ("cpu", later "cuda").</summary>
    string Name { get; }

    /// <summary>What the path runs on, for the header lines (e.g. "Vector512, 16 threads").</summary>
    string Description { get; }

    AttentionResult<T> Forward<T>(Tensor<T> q, Tensor<T> k, Tensor<T> v, AttentionOptions options, CancellationToken ct) where T : unmanaged;

    /// <summary>Forward into preallocated tensors, so timing leaves out allocation.</summary>
    void ForwardInto<T>(Tensor<T> q, Tensor<T> k, Tensor<T> v, Tensor<T> output, Tensor<float> logSumExp, AttentionOptions options,
        CancellationToken ct) where T : unmanaged;

    AttentionGradients<T> Backward<T>(Tensor<T> dOut, Tensor<T> q, Tensor<T> k, Tensor<T> v, Tensor<T> output, Tensor<float> logSumExp,
        AttentionOptions options, DropoutState? dropoutState, CancellationToken ct) where T : unmanaged;

    /// <summary>flash_attn_with_kvcache on host tensors: the caches are updated in place (appended to) as the path would.</summary>
    AttentionResult<T> ForwardWithKvCache<T>(Tensor<T> q, Tensor<T> kCache, Tensor<T> vCache, Tensor<T> kNew, Tensor<T> vNew, int[] cacheSeqlens,
        Tensor<int> blockTable, Tensor<T> rotaryCos, Tensor<T> rotarySin, AttentionOptions options, CancellationToken ct) where T : unmanaged;

    /// <summary>Whether the path runs this element type and these options forward; null when it does, else why not.</summary>
    string? ForwardGap(ElementType type, AttentionOptions options) => null;
}

/// <summary>The CPU path: the library's tiled FlashAttention-2 over host tensors.</summary>
internal sealed class CpuPath : IExecutionPath
{
    public string Name => "cpu";

    public string Description => $"{Cpu.TileGemm.WidthName}, {Environment.ProcessorCount} threads";

    public AttentionResult<T> Forward<T>(Tensor<T> q, Tensor<T> k, Tensor<T> v, AttentionOptions options, CancellationToken ct) where T : unmanaged =>
        FlashAttention.Forward<T>(q, k, v, options, ct);

    public void ForwardInto<T>(Tensor<T> q, Tensor<T> k, Tensor<T> v, Tensor<T> output, Tensor<float> logSumExp, AttentionOptions options,
        CancellationToken ct) where T : unmanaged =>
        FlashAttention.ForwardInto<T>(q, k, v, output, logSumExp, options, ct);

    public AttentionGradients<T> Backward<T>(Tensor<T> dOut, Tensor<T> q, Tensor<T> k, Tensor<T> v, Tensor<T> output, Tensor<float> logSumExp,
        AttentionOptions options, DropoutState? dropoutState, CancellationToken ct) where T : unmanaged =>
        FlashAttention.Backward<T>(dOut, q, k, v, output, logSumExp, options, dropoutState, ct);

    public AttentionResult<T> ForwardWithKvCache<T>(Tensor<T> q, Tensor<T> kCache, Tensor<T> vCache, Tensor<T> kNew, Tensor<T> vNew, int[] cacheSeqlens,
        Tensor<int> blockTable, Tensor<T> rotaryCos, Tensor<T> rotarySin, AttentionOptions options, CancellationToken ct) where T : unmanaged =>
        FlashAttention.ForwardWithKvCache<T>(q, kCache, vCache, kNew, vNew, cacheSeqlens, blockTable: blockTable, rotaryCos: rotaryCos,
            rotarySin: rotarySin, options: options, cancellationToken: ct);
}

/// <summary>The execution paths of this build and machine: the CPU always, CUDA when a usable GPU is found.</summary>
internal static class ExecutionPaths
{
    private static readonly Lazy<(IReadOnlyList<IExecutionPath> Available, IReadOnlyList<(string Name, string Reason)> Unavailable)> Probe = new(() =>
    {
        IExecutionPath cpu = new CpuPath();
        return Cuda.CudaDevice.TryGetDefault(out var device, out string reason)
            ? ([cpu, new CudaPath(device!)], [])
            : ([cpu], [("cuda", "no CUDA GPU: " + FirstSentence(reason))]);
    });

    /// <summary>The first sentence of a CUDA unavailability reason (the full one lists every path searched).</summary>
    public static string FirstSentence(string reason)
    {
        int end = reason.IndexOf(". ", StringComparison.Ordinal);
        return (end > 0 ? reason[..end] : reason.Split('\n')[0]).TrimEnd('.', ':');
    }

    public static IReadOnlyList<IExecutionPath> Available => Probe.Value.Available;

    /// <summary>Paths that this build or machine cannot run, with the reason, for the notes that commands print.</summary>
    public static IReadOnlyList<(string Name, string Reason)> Unavailable => Probe.Value.Unavailable;

    public static bool HasGpu => Available.Any(p => p.Name != "cpu");
}
