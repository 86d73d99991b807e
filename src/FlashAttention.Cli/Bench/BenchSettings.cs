using System.Globalization;

namespace FlashAttn.Cli.Bench;

/// <summary>What one `flash-attn bench` invocation measures and where it writes, with every default applied.</summary>
internal sealed record BenchSettings
{
    public required IReadOnlyList<ElementType> DTypes { get; init; }
    /// <summary>Sequence lengths per head dim.</summary>
    public required IReadOnlyList<(int HeadDim, IReadOnlyList<int> Seqlens)> Shapes { get; init; }
    public required int Batch { get; init; }
    public required int Heads { get; init; }
    public required IReadOnlyList<bool> Causal { get; init; }
    public required IReadOnlyList<string> Modes { get; init; }
    public required int Repeats { get; init; }
    /// <summary>The naive baseline runs for seqlen up to this (0: never).</summary>
    public required int NaiveMaxSeqlen { get; init; }
    /// <summary>Results folder, or null to write nothing (a --quick run without --out).</summary>
    public required string? OutputDirectory { get; init; }
    /// <summary>PNG path, or null for the default next to the results.</summary>
    public required string? PlotPath { get; init; }
    /// <summary>A --quick smoke run (shorter FMA-peak measurement).</summary>
    public required bool Quick { get; init; }
    /// <summary>The CPU path was asked for (--cpu or --cpu-peer-shapes) rather than taken for want of a GPU.</summary>
    public bool CpuRequested { get; init; }
    /// <summary>bench/peers/torch_cpu.py, to time PyTorch's CPU attention on the same cases; null leaves it out.</summary>
    public string? TorchPeerScript { get; init; }

    /// <summary>The default sweep: head dims 64 and 128, seqlen 512..2048, plus 4096 for head dim 64.</summary>
    public static readonly (int HeadDim, int[] Seqlens)[] DefaultShapes = [(64, [512, 1024, 2048, 4096]), (128, [512, 1024, 2048])];

    /// <summary>--cpu-peer-shapes (issue 7's CPU comparison with PyTorch): batch 1, 8 heads, seqlen 2048 at head dim 128 and
    /// 4096 at head dim 64, causal and not, fp32 and bf16, forward and forward+backward.</summary>
    public static readonly (int HeadDim, int[] Seqlens)[] CpuPeerShapes = [(128, [2048]), (64, [4096])];
    public static readonly ElementType[] CpuPeerTypes = [ElementType.Fp32, ElementType.Bf16];
    public const int CpuPeerBatch = 1, CpuPeerHeads = 8;

    /// <summary>The --quick smoke shape.</summary>
    public const int QuickSeqlen = 256, QuickHeadDim = 64, QuickHeads = 4, QuickRepeats = 3;

    public IEnumerable<BenchCase> Cases() =>
        from type in DTypes
        from shape in Shapes
        from seqlen in shape.Seqlens
        from causal in Causal
        from mode in Modes
        select new BenchCase(type, mode, Batch, seqlen, Heads, shape.HeadDim, causal);

    /// <summary>Integers from tokens that may also hold comma-separated lists ("512,1024 2048").</summary>
    public static int[] ParseInts(IEnumerable<string> tokens, string option, int min, int max)
    {
        var values = new List<int>();
        foreach (var item in tokens.SelectMany(t => t.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)))
        {
            if (!int.TryParse(item, NumberStyles.None, CultureInfo.InvariantCulture, out int value) || value < min || value > max)
                throw new CliException($"{option}: '{item}' is not a whole number in {min}..{max}.");
            values.Add(value);
        }
        return [.. values.Distinct()];
    }

    public static string[] ParseNames(IEnumerable<string> tokens, string option, IReadOnlyCollection<string> allowed)
    {
        var names = tokens.SelectMany(t => t.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
            .Select(n => n.ToLowerInvariant()).Distinct().ToArray();
        foreach (var name in names)
            if (!allowed.Contains(name))
                throw new CliException($"{option}: '{name}' is not one of {string.Join(", ", allowed)}.");
        return names;
    }
}
