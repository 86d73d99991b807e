using System.Text.Json.Nodes;
using FlashAttn.Cli.Train;
using FlashAttn.Training;

namespace FlashAttn.Tests.Training;

/// <summary>The article's table, issue 8's targets and the loss agreement, from fabricated results.</summary>
public sealed class TrainReportTests
{
    [Fact]
    public void TableInTheArticlesForm()
    {
        var rows = TrainReport.Table(TrainFakes.Article());
        Assert.Equal([AttentionKind.Unfused, AttentionKind.Sdpa, AttentionKind.Flash], rows.Select(r => r.Kind));
        var ours = rows[2];
        Assert.True(ours.Trained);
        Assert.Equal(3000, ours.TokensPerSecond);
        Assert.Equal(3.0, ours.Speedup!.Value, 9);
        Assert.Equal(18, ours.PeakGiB, 6);
        Assert.Equal(1 - 18.0 / 40, ours.MemorySaved!.Value, 6);
        Assert.Equal("32k", ours.LargestContext);
        Assert.Equal(1.0, rows[0].Speedup!.Value, 9);
        Assert.Equal(0, rows[0].MemorySaved!.Value, 9);
        Assert.Equal("4k", rows[0].LargestContext);
    }

    [Fact]
    public void TargetsPassWhenTheArticlesGainsAreMet()
    {
        var targets = TrainReport.Targets(TrainFakes.Article());
        Assert.Equal(4, targets.Count);
        Assert.All(targets, t => Assert.True(t.Pass, t.Name));
        Assert.Equal([TrainReport.SpeedupOverUnfused, TrainReport.MemorySaved, TrainReport.SpeedupOverSdpa, TrainReport.ContextRatio],
            targets.Select(t => t.Required));
        Assert.Equal(3.0, targets[0].Actual!.Value, 9);
        Assert.Equal(0.55, targets[1].Actual!.Value, 9);
        Assert.Equal(3000.0 / 2800, targets[2].Actual!.Value, 9);
        Assert.Equal(8.0, targets[3].Actual!.Value, 9);
    }

    [Fact]
    public void TargetsFailBelowTheirBounds()
    {
        var summary = TrainFakes.Summary(
        [
            new AttentionRun(AttentionKind.Unfused, TrainFakes.Trained(AttentionKind.Unfused, 1000, 40), TrainFakes.Sweep(AttentionKind.Unfused, 8192)),
            new AttentionRun(AttentionKind.Sdpa, TrainFakes.Trained(AttentionKind.Sdpa, 2850, 19), TrainFakes.Sweep(AttentionKind.Sdpa, 32768)),
            // 2.8x (the bound is 2.9x), 52.5% saved (52.8%), slower than SDPA, 16k = 2x unfused's 8k.
            new AttentionRun(AttentionKind.Flash, TrainFakes.Trained(AttentionKind.Flash, 2800, 19), TrainFakes.Sweep(AttentionKind.Flash, 16384)),
        ]);
        var targets = TrainReport.Targets(summary);
        Assert.All(targets, t => Assert.False(t.Pass, t.Name));
        Assert.Equal(2.0, targets[3].Actual!.Value, 9);
    }

    [Fact]
    public void TargetsNeedTheirRuns()
    {
        var summary = TrainFakes.Summary(
        [
            new AttentionRun(AttentionKind.Unfused, TrainFakes.OutOfMemory(AttentionKind.Unfused), TrainFakes.Sweep(AttentionKind.Unfused, 0)),
            new AttentionRun(AttentionKind.Flash, TrainFakes.Trained(AttentionKind.Flash, 3000, 18), TrainFakes.Sweep(AttentionKind.Flash, 65536)),
        ]);
        var targets = TrainReport.Targets(summary);
        Assert.Null(targets[0].Pass);
        Assert.Contains("unfused did not train (out of memory at step 0)", targets[0].Note);
        Assert.Null(targets[1].Pass);
        Assert.Null(targets[2].Pass);
        Assert.Contains("SDPA was not run", targets[2].Note);
        // Unfused trains none of the sweep's contexts and ours all of them.
        Assert.True(targets[3].Pass);
        Assert.True(double.IsPositiveInfinity(targets[3].Actual!.Value));

        var rows = TrainReport.Table(summary);
        Assert.False(rows[0].Trained);
        Assert.Equal("out of memory at step 0", rows[0].Failure);
        Assert.Equal("none", rows[0].LargestContext);
        Assert.Null(rows[1].Speedup);
        Assert.Equal("64k+", rows[1].LargestContext);
    }

    [Fact]
    public void WithoutTheSweepTheContextTargetIsNotJudged()
    {
        var article = TrainFakes.Article();
        var summary = TrainFakes.Summary([.. article.Runs.Select(r => r with { Sweep = null })], sweep: false);
        var context = TrainReport.Targets(summary)[3];
        Assert.Null(context.Pass);
        Assert.Equal("the context sweep did not run", context.Note);
        Assert.All(TrainReport.Table(summary), r => Assert.Equal("-", r.LargestContext));
    }

    [Fact]
    public void TargetsAtAnotherContextSaySo()
    {
        var article = TrainFakes.Article();
        var summary = TrainFakes.Summary(article.Runs, context: 2048);
        Assert.Contains("measured at context 2048", TrainReport.Targets(summary)[0].Note);
    }

    [Fact]
    public void LossAgreementIsTheLargestDifferenceOverTheFirstFiftySteps()
    {
        var agreement = TrainReport.Agreement(TrainFakes.Article());
        Assert.Equal(3, agreement.Count);
        var unfusedSdpa = agreement[0];
        Assert.Equal((AttentionKind.Unfused, AttentionKind.Sdpa), (unfusedSdpa.A, unfusedSdpa.B));
        Assert.Equal(50, unfusedSdpa.Steps);
        Assert.Equal(0.002, unfusedSdpa.MaxDifference, 9);
        Assert.True(unfusedSdpa.Pass);
        Assert.Equal(0.005, agreement[2].MaxDifference, 9); // SDPA +0.002 vs ours -0.003

        // A run that drifts apart at step 30, past the tolerance; steps after the 50th are not compared.
        var drifting = TrainFakes.Trained(AttentionKind.Flash, 3000, 18, steps: 60);
        var steps = drifting.Steps.Select(s => s.Step == 30 ? s with { Loss = s.Loss + 0.5 } : s.Step >= 50 ? s with { Loss = 99 } : s).ToList();
        var summary = TrainFakes.Summary(
        [
            new AttentionRun(AttentionKind.Unfused, TrainFakes.Trained(AttentionKind.Unfused, 1000, 40, steps: 60)),
            new AttentionRun(AttentionKind.Flash, drifting with { Steps = steps }),
        ]);
        var pair = Assert.Single(TrainReport.Agreement(summary));
        Assert.Equal(50, pair.Steps);
        Assert.Equal(0.5, pair.MaxDifference, 9);
        Assert.Equal(30, pair.AtStep);
        Assert.Equal(0, pair.FirstStepDifference, 9);
        Assert.False(pair.Pass);

        // With SDPA drifting 0.4 from unfused, that noise floor becomes every pair's tolerance.
        var noisy = TrainFakes.Trained(AttentionKind.Sdpa, 2000, 20, steps: 60);
        var noisySteps = noisy.Steps.Select(s => s.Step == 10 ? s with { Loss = s.Loss + 0.4 } : s).ToList();
        var withNoise = TrainReport.Agreement(TrainFakes.Summary(
        [
            new AttentionRun(AttentionKind.Unfused, TrainFakes.Trained(AttentionKind.Unfused, 1000, 40, steps: 60)),
            new AttentionRun(AttentionKind.Sdpa, noisy with { Steps = noisySteps }),
            new AttentionRun(AttentionKind.Flash, drifting with { Steps = steps }),
        ]));
        Assert.All(withNoise, p => Assert.Equal(0.4, p.Tolerance, 9));
        Assert.False(withNoise.Single(p => p.B == AttentionKind.Flash && p.A == AttentionKind.Unfused).Pass);   // 0.5 > 0.4
    }

    [Fact]
    public void MarkdownHasTheTableTheConfigTheAgreementAndTheTargets()
    {
        string md = TrainReport.Markdown(TrainFakes.Article(), [("loss.png", "Loss per step")]);
        Assert.Contains("| attention | tokens/s | speedup vs unfused | peak memory GiB | memory saved vs unfused | largest context |", md);
        Assert.Contains("| ours (FlashAttention.NET) | 3000 | 3.00x | 18.00 | 55.0% | 32k |", md);
        Assert.Contains("| unfused (native) | 1000 | 1.00x | 40.00 | 0.0% | 4k |", md);
        Assert.Contains("4 layers of LLaMA-7B's shape", md);
        Assert.Contains("Batch 1, context 4096, 50 steps, seed 1234", md);
        Assert.Contains("/usr/share/common-licenses (14 documents, 58,209 tokens", md);
        Assert.Contains("Tokenizer: GPT-2 BPE", md);
        Assert.Contains($"tolerance of 0.100 nats: the larger of {TrainReport.LossTolerance} nats and the difference between the two PyTorch attentions", md);
        Assert.Contains("| unfused vs ours | 50 | 0.0030 | 0 | 0.0030 | yes |", md);
        Assert.Contains("| ours >= 2.9x unfused tokens/s at context 4096 | 2.9x | 3.00x | PASS |", md);
        Assert.Contains("| ours >= 52.8% less peak memory than unfused at context 4096 | 52.8% | 55.0% | PASS |", md);
        Assert.Contains("| ours' longest trainable context >= 4x unfused's | 4.0x | 8.00x | PASS |", md);
        Assert.Contains("![Loss per step](loss.png)", md);
    }

    [Fact]
    public void ParametersOfLlama7B()
    {
        // LLaMA-7B: 32 layers, 32000 tokens, untied head: 6.74 billion parameters.
        Assert.Equal(6_738_415_616, ModelSize.Parameters(LlamaConfig.Llama7B(32, 32000)));
        Assert.Equal("6.74B", ModelSize.Format(6_738_415_616));
    }

    [Fact]
    public void RowsInTheResultsFormat()
    {
        var rows = TrainRows.From(TrainFakes.Article());
        Assert.Equal(["unfused", "torch-sdpa", "ours"], rows.Select(r => r.Impl));
        string path = Path.Combine(Path.GetTempPath(), $"flash-attn-train-{Guid.NewGuid():N}.json");
        try
        {
            TrainRows.Save(path, rows);
            var all = JsonNode.Parse(File.ReadAllText(path))!.AsArray().Select(n => n!.AsObject()).ToList();
            var ours = all[2];
            Assert.Equal("ours", ours["impl"]!.GetValue<string>());
            Assert.Equal("train", ours["op"]!.GetValue<string>());
            Assert.Equal("fwdbwd", ours["mode"]!.GetValue<string>());
            Assert.Equal(4096, ours["seqlen_q"]!.GetValue<int>());
            Assert.Equal(4096, ours["seqlen_k"]!.GetValue<int>());
            Assert.Equal(32, ours["heads"]!.GetValue<int>());
            Assert.Equal(32, ours["heads_kv"]!.GetValue<int>());
            Assert.Equal(128, ours["headdim"]!.GetValue<int>());
            Assert.True(ours["causal"]!.GetValue<bool>());
            Assert.Equal(3000, ours["tokens_per_s"]!.GetValue<double>());
            Assert.Equal(18 * 1024, ours["peak_mem_mib"]!.GetValue<double>());
            Assert.Equal(4, ours["layers"]!.GetValue<int>());
            Assert.InRange(ours["ms"]!.GetValue<double>(), 1365, 1366); // 4096 tokens at 3000 tokens/s, 4 significant digits
            Assert.True(ours["tflops"]!.GetValue<double>() > 0);
            Assert.Equal("Fake GPU", ours["device"]!.GetValue<string>());
            Assert.Equal("2026-11-26T10:00:00Z", ours["run"]!.GetValue<string>());
            Assert.Equal(50, ours["losses"]!.AsArray().Count);
            Assert.Equal(32768, ours["largest_context"]!.GetValue<int>());
            Assert.Equal(6, ours["context_sweep"]!.AsArray().Count); // 2k to 32k trained, 64k failed
            Assert.False(ours.ContainsKey("failure"));
        }
        finally
        {
            File.Delete(path);
        }
    }
}
