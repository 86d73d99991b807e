using System.CommandLine;
using System.Text.Json.Nodes;
using FlashAttn.Cli;
using FlashAttn.Cli.Commands;
using FlashAttn.Cli.Train;
using FlashAttn.Training;

namespace FlashAttn.Tests.Training;

/// <summary>`flash-attn train` end to end over a fake backend: the exit code without a GPU, the searches, and the files it writes.</summary>
public sealed class TrainCommandTests : IDisposable
{
    private readonly string _directory = Path.Combine(Path.GetTempPath(), "flash-attn-train-" + Guid.NewGuid().ToString("N"));

    private static int Invoke(ITrainBackend backend, params string[] args) =>
        new RootCommand { TrainCommand.Create(() => backend) }.Parse(["train", .. args]).Invoke();

    [Fact]
    public void HelpWorksAnywhere()
    {
        var parse = CliApp.Build().Parse(["train", "--help"]);
        Assert.Empty(parse.Errors);
        Assert.Equal(0, parse.Invoke());
    }

    [Fact]
    public void OptionsAreChecked()
    {
        Assert.NotEmpty(CliApp.Build().Parse(["train", "--attention", "bogus"]).Errors);
        Assert.Empty(CliApp.Build().Parse(["train", "--attention", "unfused", "flash", "--max-context-sweep", "false", "--layers", "3"]).Errors);
        Assert.True(CliApp.Build().Parse(["train", "--max-context-sweep"]).GetValue<bool?>("--max-context-sweep"));
        Assert.False(CliApp.Build().Parse(["train", "--max-context-sweep", "false"]).GetValue<bool?>("--max-context-sweep"));
        Assert.Null(CliApp.Build().Parse(["train"]).GetValue<bool?>("--max-context-sweep"));
        Assert.Equal([AttentionKind.Unfused, AttentionKind.Flash], TrainAttention.Parse(["flash", "unfused"]));
        Assert.Equal(TrainAttention.All, TrainAttention.Parse([]));
        Assert.Equal(TrainAttention.All, TrainAttention.Parse(["all", "sdpa"]));
    }

    [Fact]
    public void WithoutAGpuItSaysSoAndExitsWithTwo()
    {
        var backend = new FakeBackend { Unavailable = "TorchSharp cannot load libtorch here." };
        Assert.Equal(TrainSession.NoDevice, Invoke(backend, "--tiny", "--out", _directory));
        Assert.Empty(backend.Calls);
        Assert.False(Directory.Exists(_directory));
    }

    [Fact]
    public void TheRealBackendOnAMachineWithoutLibtorchExitsWithTwo()
    {
        var backend = new TorchTrainBackend();
        if (backend.Unavailable is null) Assert.Skip("libtorch and a CUDA GPU are here: the real command would train.");
        Assert.Equal(TrainSession.NoDevice, Invoke(backend, "--tiny", "--out", _directory));
    }

    [Fact]
    public void TinyRunWritesTheJsonThePlotsAndTheReport()
    {
        var backend = new FakeBackend();
        Assert.Equal(0, Invoke(backend, "--tiny", "--steps", "6", "--out", _directory));
        Assert.Equal(3, backend.Calls.Count); // no search, no sweep
        Assert.All(backend.Calls, c => Assert.Equal((256, 256, 2, 4, 6), (c.Config.Hidden, c.Settings.Context, c.Config.Layers, c.Settings.Batch, c.Settings.Steps)));

        var rows = JsonNode.Parse(File.ReadAllText(Path.Combine(_directory, TrainSession.JsonFile)))!.AsArray();
        Assert.Equal(["unfused", "torch-sdpa", "ours"], rows.Select(r => r!["impl"]!.GetValue<string>()));
        Assert.All(rows, r => Assert.Equal(6, r!["losses"]!.AsArray().Count));
        foreach (string plot in new[] { TrainPlots.LossFile, TrainPlots.ThroughputFile })
            Assert.True(new FileInfo(Path.Combine(_directory, plot)).Length > 1000, plot);
        Assert.False(File.Exists(Path.Combine(_directory, TrainPlots.ContextFile)));
        string report = File.ReadAllText(Path.Combine(_directory, TrainSession.ReportFile));
        Assert.Contains("| ours (FlashAttention.NET) | 3000 | 3.00x |", report);
        Assert.Contains("the context sweep did not run", report);
    }

    [Fact]
    public void DefaultsAreFoundByProbingTheUnfusedBaseline()
    {
        // Unfused trains up to 6 layers, 2 sequences and context 4096; the others up to context 32k.
        var backend = new FakeBackend
        {
            Estimate = 4,
            Trains = (c, s) => s.Attention == AttentionKind.Unfused ? c.Layers <= 6 && s.Batch <= 2 && s.Context <= 4096 : s.Context <= 32768,
        };
        Assert.Equal(0, Invoke(backend, "--steps", "4", "--out", _directory));
        var calls = backend.Calls;
        // Layers from the estimate 4 up to the first failure, at batch 1; then batches from 2 up at 6 layers.
        Assert.Equal([(4, 1), (5, 1), (6, 1), (7, 1), (6, 2), (6, 3)], calls.Take(6).Select(c => (c.Config.Layers, c.Settings.Batch)));
        Assert.All(calls.Take(6), c => Assert.Equal((AttentionKind.Unfused, 4096, ExperimentPlan.ProbeSteps), (c.Settings.Attention, c.Settings.Context, c.Settings.Steps)));
        // The three main runs at 6 layers, batch 2.
        Assert.Equal(TrainAttention.All, calls.Skip(6).Take(3).Select(c => c.Settings.Attention));
        Assert.All(calls.Skip(6).Take(3), c => Assert.Equal((6, 2, 4096, 4), (c.Config.Layers, c.Settings.Batch, c.Settings.Context, c.Settings.Steps)));
        // The sweeps at batch 1: unfused fails at 8k, the others at 64k.
        Assert.Equal([2048, 4096, 8192], calls.Skip(9).Where(c => c.Settings.Attention == AttentionKind.Unfused).Select(c => c.Settings.Context));
        Assert.Equal(ExperimentPlan.SweepContexts, calls.Skip(9).Where(c => c.Settings.Attention == AttentionKind.Flash).Select(c => c.Settings.Context));
        Assert.All(calls.Skip(9), c => Assert.Equal((6, 1), (c.Config.Layers, c.Settings.Batch)));
        Assert.Equal(9 + 3 + 6 + 6, calls.Count);

        var rows = JsonNode.Parse(File.ReadAllText(Path.Combine(_directory, TrainSession.JsonFile)))!.AsArray();
        Assert.All(rows, r => Assert.Equal((6, 2), (r!["layers"]!.GetValue<int>(), r["batch"]!.GetValue<int>())));
        Assert.Equal([4096, 32768, 32768], rows.Select(r => r!["largest_context"]!.GetValue<int>()));
        Assert.True(File.Exists(Path.Combine(_directory, TrainPlots.ContextFile)));
        string report = File.ReadAllText(Path.Combine(_directory, TrainSession.ReportFile));
        Assert.Contains("Layers: 6, the most the unfused baseline trains at batch 1, context 4096", report);
        Assert.Contains("Batch: 2, the largest the unfused baseline takes at 6 layers", report);
        Assert.Contains("| ours' longest trainable context >= 4x unfused's | 4.0x | 8.00x | PASS |", report);
        Assert.DoesNotContain("Interim", report); // the report written before the sweep was replaced
    }

    [Fact]
    public void GivenLayersAndBatchAreNotSearched()
    {
        var backend = new FakeBackend();
        Assert.Equal(0, Invoke(backend, "--layers", "3", "--batch", "2", "--steps", "3", "--attention", "flash", "--max-context-sweep", "false", "--out", _directory));
        var call = Assert.Single(backend.Calls);
        Assert.Equal((3, 2, AttentionKind.Flash), (call.Config.Layers, call.Settings.Batch, call.Settings.Attention));
    }

    [Fact]
    public void NoTrainableLayerIsAClearError()
    {
        var backend = new FakeBackend { Estimate = 2, Trains = (_, _) => false };
        Assert.Equal(GuardedAction.Failure, Invoke(backend, "--out", _directory));
        Assert.Equal([2, 1], backend.Calls.Select(c => c.Config.Layers));
    }

    public void Dispose()
    {
        if (Directory.Exists(_directory)) Directory.Delete(_directory, recursive: true);
    }
}
