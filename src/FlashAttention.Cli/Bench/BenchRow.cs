using System.Text.Json.Serialization;

namespace FlashAttn.Cli.Bench;

/// <summary>
/// One result row in DESIGN.md's results format (snake_case keys: impl, op, mode, dtype, batch, seqlen_q, seqlen_k,
/// heads, heads_kv, headdim, causal, ms, tflops, device, run), plus gflops, fma_peak_gflops (the same run's measured
/// fp32 FMA peak), runs (timed runs behind the median), vector (the CPU path's instruction width) and other_cpu
/// (the CPU share other processes took meanwhile: a disturbed row on a shared machine shows here); optional keys are
/// omitted when null (workspace_mib, feature, decode rows' kv_tbps and copy_tbps, and the torch-cpu peer's threads and
/// torch_version).
/// </summary>
internal sealed record BenchRow
{
    public required string Impl { get; init; }
    public string Op { get; init; } = "attention";
    public required string Mode { get; init; }
    public required string Dtype { get; init; }
    public required int Batch { get; init; }
    public required int SeqlenQ { get; init; }
    public required int SeqlenK { get; init; }
    public required int Heads { get; init; }
    public required int HeadsKv { get; init; }
    public required int Headdim { get; init; }
    public required bool Causal { get; init; }
    public required double Ms { get; init; }
    public required double Tflops { get; init; }
    public required string Device { get; init; }
    public required string Run { get; init; }
    public required double Gflops { get; init; }
    public required double FmaPeakGflops { get; init; }
    public required int Runs { get; init; }
    public required string Vector { get; init; }
    /// <summary>Share of the machine's CPU time that other processes used while this row was measured (Linux; 0 elsewhere).</summary>
    public double OtherCpu { get; init; }
    /// <summary>DESIGN.md's optional workspace_mib: peak device memory beyond inputs and outputs; left out when null.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? WorkspaceMib { get; init; }

    /// <summary>Feature rows: TFLOP/s counted on the tiles the kernels compute (FeatureCase.TileFlops), the measure issue 5 sets
    /// for windows; left out when null.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? TflopsOnTiles { get; init; }

    /// <summary>DESIGN.md's optional feature key (softcap, alibi, window, varlen, ...); null for the plain sweep's rows.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Feature { get; init; }

    /// <summary>DESIGN.md's optional kv_tbps for decode rows: K and V cache bytes one call reads over its latency, in TB/s
    /// (1e12 bytes/s); left out when null.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? KvTbps { get; init; }

    /// <summary>DESIGN.md's optional copy_tbps for decode rows: the same run's device-to-device copy bandwidth, read + write
    /// bytes per second in TB/s, the ceiling decode is judged against; left out when null.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? CopyTbps { get; init; }

    /// <summary>Threads the torch-cpu peer ran with (torch.set_num_threads); left out when null.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public int? Threads { get; init; }

    /// <summary>torch.__version__ of the torch-cpu peer; left out when null.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? TorchVersion { get; init; }

    [JsonIgnore]
    public double PercentOfPeak => FmaPeakGflops > 0 ? 100 * Gflops / FmaPeakGflops : double.NaN;

    /// <summary>Rows that measure the same thing with different implementations share this key.</summary>
    [JsonIgnore]
    public (string Mode, string Dtype, int Batch, int Seqlen, int Heads, int Headdim, bool Causal) Shape =>
        (Mode, Dtype, Batch, SeqlenQ, Heads, Headdim, Causal);

    public static BenchRow From(string impl, BenchCase c, double ms, int runs, DeviceInfo device, string run, double peakGflops, string vector)
    {
        double gflops = c.Flops / (ms * 1e-3) / 1e9;
        return new BenchRow
        {
            Impl = impl,
            Mode = c.Mode,
            Dtype = c.DType.Name(),
            Batch = c.Batch,
            SeqlenQ = c.Seqlen,
            SeqlenK = c.Seqlen,
            Heads = c.Heads,
            HeadsKv = c.Heads,
            Headdim = c.HeadDim,
            Causal = c.Causal,
            Ms = Significant(ms),
            Tflops = Significant(gflops / 1000),
            Device = device.Name,
            Run = run,
            Gflops = Significant(gflops),
            FmaPeakGflops = Significant(peakGflops),
            Runs = runs,
            Vector = vector,
        };
    }

    private static double Significant(double x) => x == 0 || !double.IsFinite(x) ? x : Math.Round(x, Math.Max(0, 4 - (int)Math.Floor(Math.Log10(Math.Abs(x))) - 1));
}

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower)]
[JsonSerializable(typeof(BenchRow))]
internal sealed partial class BenchJson : JsonSerializerContext;
