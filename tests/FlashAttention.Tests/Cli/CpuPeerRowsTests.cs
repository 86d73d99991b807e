using System.Text.Json;
using System.Text.Json.Nodes;
using FlashAttn.Cli;
using FlashAttn.Cli.Bench;
using FlashAttn.Cli.Gpu;
using Spectre.Console;

namespace FlashAttn.Tests.Cli;

/// <summary>The torch-cpu peer's data side, without Python: the case list it is handed, its rows read back as result rows,
/// ours paired with them in the table, and the --cpu-peer-shapes preset.</summary>
public sealed class CpuPeerRowsTests
{
    private static readonly DeviceInfo Device = new("cpu-test-16core", "Test CPU (16 threads)");
    private const string Run = "2026-11-26T10:15:00Z";

    private static readonly BenchCase Case = new(ElementType.Bf16, "fwdbwd", 1, 2048, 8, 128, Causal: true);

    /// <summary>A row as torch_cpu.py prints it for <see cref="Case"/>.</summary>
    private static JsonObject PeerRow(double ms = 50.0) => JsonNode.Parse($$"""
        {"batch": 1, "seqlen_q": 2048, "seqlen_k": 2048, "heads": 8, "heads_kv": 8, "headdim": 128, "causal": true, "dtype": "bf16",
         "mode": "fwdbwd", "impl": "torch-cpu", "op": "attention", "ms": {{ms}}, "tflops": 0.6, "runs": 5, "threads": 16,
         "torch_version": "2.11.0+cu130", "cpu_capability": "AVX512", "device": "Some CPU", "run": "{{Run}}"}
        """)!.AsObject();

    private static BenchRow Ours(BenchCase c, double ms) => BenchRow.From("ours", c, ms, 5, Device, Run, 1000, "Vector512");

    [Fact]
    public void TheCaseListUsesTheGpuPeersKeys()
    {
        var shape = CpuPeerRows.ToPeerShape(Case);
        var gpuShape = new GpuBenchCase("bf16", 1, 2048, 8, 128, true, "fwdbwd").ToPeerShape();
        Assert.Equal(gpuShape.ToJsonString(), shape.ToJsonString());
        Assert.Equal("fp32", CpuPeerRows.ToPeerShape(Case with { DType = ElementType.Fp32 })["dtype"]!.GetValue<string>());
    }

    [Fact]
    public void PeerRowsBecomeOrdinaryResultRows()
    {
        var row = CpuPeerRows.FromPeer(PeerRow(), Device, Run, peakGflops: 1000)!;
        Assert.Equal(("torch-cpu", "attention", "fwdbwd", "bf16"), (row.Impl, row.Op, row.Mode, row.Dtype));
        Assert.Equal((1, 2048, 2048, 8, 8, 128, true), (row.Batch, row.SeqlenQ, row.SeqlenK, row.Heads, row.HeadsKv, row.Headdim, row.Causal));
        Assert.Equal(50.0, row.Ms);
        // GFLOP/s from our FLOP count, not the script's tflops: 3.5 x 4 b s^2 h d / 2 over 50 ms.
        Assert.Equal(Math.Round(Case.Flops / 50e-3 / 1e9, 1), row.Gflops);
        Assert.Equal(100 * row.Gflops / 1000, row.PercentOfPeak, 6);
        Assert.Equal((5, 16, "2.11.0+cu130", "AVX512"), (row.Runs, row.Threads, row.TorchVersion, row.Vector));
        Assert.Equal((Device.Name, Run), (row.Device, row.Run));

        var json = JsonSerializer.SerializeToNode(row, BenchJson.Default.BenchRow)!.AsObject();
        Assert.Equal("torch-cpu", json["impl"]!.GetValue<string>());
        Assert.Equal(16, json["threads"]!.GetValue<int>());
        Assert.Equal("2.11.0+cu130", json["torch_version"]!.GetValue<string>());
        Assert.Equal(1000, json["fma_peak_gflops"]!.GetValue<double>());
    }

    [Fact]
    public void OurRowsDoNotGainThePeerKeys()
    {
        var json = JsonSerializer.SerializeToNode(Ours(Case, 25), BenchJson.Default.BenchRow)!.AsObject();
        Assert.False(json.ContainsKey("threads"));
        Assert.False(json.ContainsKey("torch_version"));
    }

    [Fact]
    public void RowsWithoutTheirKeysAreLeftOut()
    {
        JsonObject Without(string key) { var r = PeerRow(); r.Remove(key); return r; }
        Assert.Null(CpuPeerRows.FromPeer(Without("ms"), Device, Run, 1000));
        Assert.Null(CpuPeerRows.FromPeer(Without("causal"), Device, Run, 1000));
        Assert.Null(CpuPeerRows.FromPeer(Without("headdim"), Device, Run, 1000));
        var odd = PeerRow();
        odd["dtype"] = "fp64";
        Assert.Null(CpuPeerRows.FromPeer(odd, Device, Run, 1000));
        Assert.Null(CpuPeerRows.FromPeer(PeerRow(ms: 0), Device, Run, 1000));

        // Optional keys may be missing: no runs, threads, version or capability.
        var bare = PeerRow();
        foreach (var key in new[] { "runs", "threads", "torch_version", "cpu_capability" }) bare.Remove(key);
        var row = CpuPeerRows.FromPeer(bare, Device, Run, 1000)!;
        Assert.Equal((0, (int?)null, (string?)null, "torch"), (row.Runs, row.Threads, row.TorchVersion, row.Vector));
    }

    [Fact]
    public void OursIsPairedWithTorchOfTheSameShape()
    {
        var torch = CpuPeerRows.FromPeer(PeerRow(ms: 50), Device, Run, 1000)!;
        var other = Case with { Causal = false };
        var ratios = CpuPeerRows.OursOverTorch([Ours(Case, 25), torch, Ours(other, 40), Ours(Case with { Mode = "fwd" }, 10)]);
        Assert.Equal(2.0, Assert.Single(ratios).Value, 9); // ours twice as fast; the other shapes have no torch row
        Assert.Equal(torch.Shape, ratios.Keys.Single());
        Assert.Empty(CpuPeerRows.OursOverTorch([Ours(Case, 25)]));
    }

    [Fact]
    public void TheTableShowsTheRatioOnlyWithTorchRows()
    {
        var torch = CpuPeerRows.FromPeer(PeerRow(ms: 50), Device, Run, 1000)!;
        string with = Render(BenchTable.Build([Ours(Case, 25), torch]));
        Assert.Contains("ours / torch", with);
        Assert.Contains("2.00x", with);
        var lines = with.Split('\n').ToList();
        int oursLine = lines.FindIndex(l => l.Contains(" ours ", StringComparison.Ordinal) && !l.Contains('/')), torchLine = lines.FindIndex(l => l.Contains(" torch-cpu ", StringComparison.Ordinal));
        Assert.InRange(oursLine, 0, torchLine - 1);
        Assert.DoesNotContain("ours / torch", Render(BenchTable.Build([Ours(Case, 25)])));
    }

    [Fact]
    public void ThePresetIsIssue7sShapes()
    {
        var settings = new BenchSettings
        {
            DTypes = BenchSettings.CpuPeerTypes, Shapes = [.. BenchSettings.CpuPeerShapes.Select(x => (x.HeadDim, (IReadOnlyList<int>)x.Seqlens))],
            Batch = BenchSettings.CpuPeerBatch, Heads = BenchSettings.CpuPeerHeads, Causal = [false, true], Modes = ["fwd", "fwdbwd"], Repeats = 5,
            NaiveMaxSeqlen = 0, OutputDirectory = null, PlotPath = null, Quick = false,
        };
        var cases = settings.Cases().ToList();
        Assert.Equal(16, cases.Count);
        Assert.All(cases, c => Assert.Equal((1, 8), (c.Batch, c.Heads)));
        Assert.Equal([(64, 4096), (128, 2048)], cases.Select(c => (c.HeadDim, c.Seqlen)).Distinct().Order());
        Assert.Equal(["bf16", "fp32"], cases.Select(c => c.DType.Name()).Distinct().Order());
    }

    private static string Render(Table table)
    {
        var writer = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors, Out = new AnsiConsoleOutput(writer), Interactive = InteractionSupport.No,
        });
        console.Profile.Width = 240;
        console.Write(table);
        return writer.ToString();
    }
}
