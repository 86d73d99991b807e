using FlashAttn.Cli.Train;
using FlashAttn.Training;

namespace FlashAttn.Tests.Training;

/// <summary>The searches behind `flash-attn train`'s defaults, over a fake runner: step layers down on failure and up on success, grow the
/// batch until it fails, sweep contexts until one fails.</summary>
public sealed class ExperimentPlanTests
{
    private static TrainRunner Runner(Func<LlamaConfig, TrainSettings, bool> trains, List<(LlamaConfig, TrainSettings)> calls) => (config, settings) =>
    {
        calls.Add((config, settings));
        return trains(config, settings)
            ? TrainFakes.Trained(settings.Attention, 1000, 10, settings.Steps, batch: settings.Batch, context: settings.Context, config: config)
            : TrainFakes.OutOfMemory(settings.Attention, settings.Batch, settings.Context, config);
    };

    [Fact]
    public void LayersStepDownFromAnEstimateThatFails()
    {
        var calls = new List<(LlamaConfig, TrainSettings)>();
        var search = ExperimentPlan.FindLayers(Runner((c, _) => c.Layers <= 9, calls), TrainFakes.Model(1), estimate: 12, context: 4096, seed: 5);
        Assert.Equal(9, search.Value);
        Assert.Equal([12, 11, 10, 9], search.Probes.Select(p => p.Layers));
        Assert.Equal([false, false, false, true], search.Probes.Select(p => p.Trained));
        Assert.All(calls, call =>
        {
            var (config, settings) = call;
            Assert.Equal(AttentionKind.Unfused, settings.Attention);
            Assert.Equal(1, settings.Batch);
            Assert.Equal(4096, settings.Context);
            Assert.Equal(ExperimentPlan.ProbeSteps, settings.Steps);
            Assert.Equal(5, settings.Seed);
            Assert.Equal(4096, config.Hidden);
        });
    }

    [Fact]
    public void LayersStepUpFromAnEstimateThatTrains()
    {
        var calls = new List<(LlamaConfig, TrainSettings)>();
        var search = ExperimentPlan.FindLayers(Runner((c, _) => c.Layers <= 9, calls), TrainFakes.Model(1), estimate: 7, context: 4096, seed: 1);
        Assert.Equal(9, search.Value);
        Assert.Equal([7, 8, 9, 10], search.Probes.Select(p => p.Layers));
    }

    [Fact]
    public void LayersStayWithinOneAndTheCap()
    {
        var calls = new List<(LlamaConfig, TrainSettings)>();
        var all = ExperimentPlan.FindLayers(Runner((_, _) => true, calls), TrainFakes.Model(1), estimate: 100, context: 4096, seed: 1);
        Assert.Equal(ExperimentPlan.MaxLayers, all.Value);
        Assert.Equal([ExperimentPlan.MaxLayers], all.Probes.Select(p => p.Layers));

        var none = ExperimentPlan.FindLayers(Runner((_, _) => false, calls), TrainFakes.Model(1), estimate: 3, context: 4096, seed: 1);
        Assert.Null(none.Value);
        Assert.Equal([3, 2, 1], none.Probes.Select(p => p.Layers));

        var fromZero = ExperimentPlan.FindLayers(Runner((c, _) => c.Layers <= 2, calls), TrainFakes.Model(1), estimate: 0, context: 4096, seed: 1);
        Assert.Equal(2, fromZero.Value);
        Assert.Equal([1, 2, 3], fromZero.Probes.Select(p => p.Layers));
    }

    [Fact]
    public void ARunThatStopsEarlyOrDivergesDoesNotCount()
    {
        var config = TrainFakes.Model();
        var settings = ExperimentPlan.ProbeSettings(AttentionKind.Unfused, 1, 4096, 1);
        var partial = new TrainResult(config, settings, [new StepResult(0, 10, 1, 4096)], 4096, 1, null);
        Assert.False(Probe.Succeeded(partial));
        var diverged = new TrainResult(config, settings, [.. Enumerable.Range(0, 3).Select(i => new StepResult(i, double.NaN, 1, 4096))], 4096, 1, null);
        Assert.False(Probe.Succeeded(diverged));
        var good = new TrainResult(config, settings, [.. Enumerable.Range(0, 3).Select(i => new StepResult(i, 10, 1, 4096))], 4096, 1, null);
        Assert.True(Probe.Succeeded(good));
        Assert.False(Probe.Succeeded(good with { Failure = "out of memory at step 2" }));
    }

    [Fact]
    public void BatchGrowsUntilItFails()
    {
        var calls = new List<(LlamaConfig, TrainSettings)>();
        var search = ExperimentPlan.FindBatch(Runner((_, s) => s.Batch <= 3, calls), TrainFakes.Model(9), 4096, 1, batchOneTrains: true);
        Assert.Equal(3, search.Value);
        Assert.Equal([2, 3, 4], search.Probes.Select(p => p.Batch));
        Assert.All(search.Probes, p => Assert.Equal(9, p.Layers));
    }

    [Fact]
    public void BatchIsCappedAtEight()
    {
        var calls = new List<(LlamaConfig, TrainSettings)>();
        var search = ExperimentPlan.FindBatch(Runner((_, _) => true, calls), TrainFakes.Model(), 4096, 1, batchOneTrains: true);
        Assert.Equal(ExperimentPlan.MaxBatch, search.Value);
        Assert.Equal([2, 3, 4, 5, 6, 7, 8], search.Probes.Select(p => p.Batch));
    }

    [Fact]
    public void BatchOneIsProbedWhenNotKnown()
    {
        var calls = new List<(LlamaConfig, TrainSettings)>();
        var none = ExperimentPlan.FindBatch(Runner((_, _) => false, calls), TrainFakes.Model(), 4096, 1, batchOneTrains: false);
        Assert.Null(none.Value);
        Assert.Equal([1], none.Probes.Select(p => p.Batch));
        var one = ExperimentPlan.FindBatch(Runner((_, s) => s.Batch == 1, calls), TrainFakes.Model(), 4096, 1, batchOneTrains: false);
        Assert.Equal(1, one.Value);
        Assert.Equal([1, 2], one.Probes.Select(p => p.Batch));
    }

    [Fact]
    public void ContextSweepStopsAtTheFirstFailure()
    {
        var calls = new List<(LlamaConfig, TrainSettings)>();
        var search = ExperimentPlan.LargestContext(Runner((_, s) => s.Context <= 8192, calls), TrainFakes.Model(), AttentionKind.Flash,
            ExperimentPlan.SweepContexts, seed: 1);
        Assert.Equal(8192, search.Value);
        Assert.Equal([2048, 4096, 8192, 16384], search.Probes.Select(p => p.Context));
        Assert.All(calls, c => Assert.Equal((AttentionKind.Flash, 1, ExperimentPlan.ProbeSteps), (c.Item2.Attention, c.Item2.Batch, c.Item2.Steps)));

        var none = ExperimentPlan.LargestContext(Runner((_, _) => false, calls), TrainFakes.Model(), AttentionKind.Unfused, ExperimentPlan.SweepContexts, 1);
        Assert.Null(none.Value);
        Assert.Single(none.Probes);

        var all = ExperimentPlan.LargestContext(Runner((_, _) => true, calls), TrainFakes.Model(), AttentionKind.Flash, ExperimentPlan.SweepContexts, 1);
        Assert.Equal(65536, all.Value);
        Assert.Equal(6, all.Probes.Count);
    }

    [Fact]
    public void SweepCoversTwoToSixtyFourK() =>
        Assert.Equal([2048, 4096, 8192, 16384, 32768, 65536], ExperimentPlan.SweepContexts);
}
