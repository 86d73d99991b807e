using System.Text.Json.Nodes;
using FlashAttn.Cli.Bench;
using FlashAttn.Cli.Gpu;

namespace FlashAttn.Tests.Cli;

/// <summary>Decode rows share the results file with the attention sweep: saving one op keeps the other's rows, and loading
/// (plots, tables) sees only the attention sweep.</summary>
public sealed class ResultsFileDecodeTests : IDisposable
{
    private readonly string _directory = Path.Combine(Path.GetTempPath(), "flash-attn-results-" + Guid.NewGuid().ToString("N"));

    private static BenchRow Attention(string impl, string run) => new()
    {
        Impl = impl, Mode = "fwd", Dtype = "bf16", Batch = 4, SeqlenQ = 4096, SeqlenK = 4096, Heads = 16, HeadsKv = 16, Headdim = 128,
        Causal = true, Ms = 1.0, Tflops = 300, Device = "GPU", Run = run, Gflops = 300000, FmaPeakGflops = 0, Runs = 20, Vector = "cuda",
    };

    [Fact]
    public void SavingOneOpKeepsTheOther()
    {
        ResultsFile.Save(_directory, "gpu", [Attention("ours", "2026-11-26T10:00:00Z"), Attention("torch-flash", "2026-11-26T10:00:00Z")]);
        var decode = DecodeRows.Ours(new DecodeCase(8, 8192), 0.1, 9, 3.0, "GPU", "2026-11-26T11:00:00Z");
        var saved = ResultsFile.Save(_directory, "gpu", [decode]);
        Assert.NotNull(saved.HistoryPath);

        var all = JsonNode.Parse(File.ReadAllText(saved.Path))!.AsArray().Select(n => n!.AsObject()).ToList();
        Assert.Equal(3, all.Count);
        Assert.Single(all, r => r["op"]!.GetValue<string>() == "decode" && r["impl"]!.GetValue<string>() == "ours");

        var loaded = ResultsFile.Load(saved.Path);
        Assert.Equal(["ours", "torch-flash"], loaded.Select(r => r.Impl).Order());
        Assert.All(loaded, r => Assert.Equal("attention", r.Op));

        // A later attention run replaces the attention rows and keeps the decode row.
        saved = ResultsFile.Save(_directory, "gpu", [Attention("ours", "2026-11-26T12:00:00Z")]);
        all = JsonNode.Parse(File.ReadAllText(saved.Path))!.AsArray().Select(n => n!.AsObject()).ToList();
        Assert.Equal(3, all.Count);
        Assert.Equal("2026-11-26T12:00:00Z", all.Single(r => r["op"]!.GetValue<string>() == "attention" && r["impl"]!.GetValue<string>() == "ours")["run"]!.GetValue<string>());
        Assert.Single(all, r => r["op"]!.GetValue<string>() == "decode");
    }

    public void Dispose()
    {
        if (Directory.Exists(_directory)) Directory.Delete(_directory, recursive: true);
    }
}
