using FlashAttn.Cuda;
using FlashAttn.Training;
using TorchSharp;

namespace FlashAttn.Cli.Train;

/// <summary>What `flash-attn train` needs from the machine: a usable GPU with libtorch, its name and memory, and the trainer.</summary>
internal interface ITrainBackend
{
    /// <summary>Null when training can run here; else why not, in one sentence or two.</summary>
    string? Unavailable { get; }

    /// <summary>The GPU's name.</summary>
    string DeviceName { get; }

    /// <summary>The GPU's memory in bytes.</summary>
    long DeviceBytes { get; }

    /// <summary>Trains one configuration (<see cref="Trainer.Run"/>).</summary>
    TrainResult Run(LlamaConfig config, TrainSettings settings, ITokenSource data, IProgress<StepResult>? progress, CancellationToken ct);

    /// <summary>A first guess at the most layers that train (<see cref="ParameterCount.EstimateMaxLayers"/>).</summary>
    int EstimateMaxLayers(LlamaConfig perLayerShape, long deviceBytes, int context, AttentionKind kind);
}

/// <summary>
/// The real backend: TorchSharp over the machine's libtorch (LD_LIBRARY_PATH to a libtorch 2.10+ lib folder, e.g. a pip torch's
/// site-packages/torch/lib; libLibTorchSharp.so needs GLIBCXX_3.4.32 / glibc 2.38+), torch's CUDA device, and FlashAttention.NET's
/// own CUDA path for ours. Probed once, on first use.
/// </summary>
internal sealed class TorchTrainBackend : ITrainBackend
{
    private readonly Lazy<(string? Reason, CudaDevice? Device)> _probe = new(Probe, LazyThreadSafetyMode.ExecutionAndPublication);

    public string? Unavailable => _probe.Value.Reason;

    public string DeviceName => _probe.Value.Device?.Name ?? "no GPU";

    public long DeviceBytes => _probe.Value.Device?.TotalMemoryBytes ?? 0;

    public TrainResult Run(LlamaConfig config, TrainSettings settings, ITokenSource data, IProgress<StepResult>? progress, CancellationToken ct)
    {
        try
        {
            return Trainer.Run(config, settings, data, progress, ct);
        }
        finally
        {
            // Tensors a run dropped without disposing hold device memory until finalised: free them before the next run measures its peak.
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
        }
    }

    public int EstimateMaxLayers(LlamaConfig perLayerShape, long deviceBytes, int context, AttentionKind kind) =>
        TrainingMemoryEstimate.EstimateMaxLayers(perLayerShape, deviceBytes, context, kind);

    private static (string?, CudaDevice?) Probe()
    {
        // TorchSharp prints a long load trace to stdout when libtorch is missing: keep it for FLASH_ATTN_DEBUG=1, show the one-line reason.
        _ = Spectre.Console.AnsiConsole.Console; // bound to the real stdout before it is swapped
        var stdout = Console.Out;
        var trace = new StringWriter();
        Console.SetOut(trace);
        try
        {
            return ProbeTorch();
        }
        finally
        {
            Console.SetOut(stdout);
            if (Environment.GetEnvironmentVariable("FLASH_ATTN_DEBUG") == "1") Console.Write(trace.ToString());
        }
    }

    private static (string?, CudaDevice?) ProbeTorch()
    {
        try
        {
            using var probe = torch.zeros(1);
        }
        catch (Exception e) when (e is TypeInitializationException or DllNotFoundException or EntryPointNotFoundException or BadImageFormatException
                                      or NotSupportedException or InvalidOperationException)
        {
            return ("TorchSharp cannot load libtorch here (it needs LD_LIBRARY_PATH pointing at a libtorch 2.10+ lib folder, e.g. " +
                    "<python site-packages>/torch/lib, and a libstdc++ with GLIBCXX_3.4.32, glibc 2.38+): " + FirstSentence(e), null);
        }
        try
        {
            if (!torch.cuda.is_available())
                return ("libtorch sees no CUDA device (torch.cuda.is_available() is false; is libtorch_cuda.so on the loader path?).", null);
        }
        catch (Exception e)
        {
            return ("libtorch's CUDA backend does not load: " + FirstSentence(e), null);
        }
        if (!CudaDevice.TryGetDefault(out var device, out string reason))
            return ("libtorch sees a GPU but FlashAttention.NET's CUDA path cannot use it: " + ExecutionPaths.FirstSentence(reason), null);
        return (null, device);
    }

    private static string FirstSentence(Exception e)
    {
        while (e.InnerException is not null) e = e.InnerException;
        string line = e.Message.Split('\n', 2)[0].Trim();
        int end = line.IndexOf(". ", StringComparison.Ordinal);
        return $"{e.GetType().Name}: {(end > 0 ? line[..(end + 1)] : line)}";
    }
}
