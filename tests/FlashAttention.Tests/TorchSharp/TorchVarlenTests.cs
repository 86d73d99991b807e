using System.Globalization;
using FlashAttn.Tests.Infrastructure;
using FlashAttn.TorchSharp;
using TorchSharp;

namespace FlashAttn.Tests.TorchSharp;

/// <summary>
/// One varlen test geometry: the query and key length of each sequence, heads and head dim, and the options for the whole
/// batch (sequence null) or for sequence b alone (its row of (batch, heads) ALiBi slopes).
/// </summary>
internal sealed record VarlenCase(string Name, int[] SeqlensQ, int[] SeqlensK, int HeadsQ, int HeadsKv, int HeadDim, Func<int?, AttentionOptions> Options)
{
    public int Batch => SeqlensQ.Length;
    public int[] CuQ => Cumulative(SeqlensQ);
    public int[] CuK => Cumulative(SeqlensK);
    public int TotalQ => SeqlensQ.Sum();
    public int TotalK => SeqlensK.Sum();
    public int MaxQ => SeqlensQ.Max();
    public int MaxK => SeqlensK.Max();

    public static int[] Cumulative(int[] lengths)
    {
        var cu = new int[lengths.Length + 1];
        for (int i = 0; i < lengths.Length; i++)
            cu[i + 1] = cu[i] + lengths[i];
        return cu;
    }

    public const string EmptySequences = "empty-sequences";

    private static readonly float[] SequenceSlopes = [0.1f, 0.15f, 0.2f, 0.25f, 0.3f, 0.35f];

    private static readonly Dictionary<string, VarlenCase> All = new[]
    {
        // An empty sequence in the middle; no mask.
        new VarlenCase("plain", [5, 0, 17, 9], [5, 0, 17, 9], 4, 4, 32, _ => AttentionOptions.Default),
        // seqlen_q < seqlen_k per sequence: the causal mask is aligned bottom-right in each one.
        new VarlenCase("causal", [3, 17, 9], [7, 17, 20], 4, 4, 24, _ => new AttentionOptions { Causal = true }),
        new VarlenCase("window", [12, 1, 20], [12, 1, 20], 2, 2, 16, _ => new AttentionOptions { WindowLeft = 4, WindowRight = 2 }),
        new VarlenCase("causal-window-gqa", [9, 16], [13, 16], 6, 2, 40, _ => new AttentionOptions { Causal = true, WindowLeft = 3 }),
        new VarlenCase("mqa-scale", [7, 11], [19, 5], 4, 1, 8, _ => new AttentionOptions { SoftmaxScale = 0.3f }),
        new VarlenCase("softcap", [10, 21], [10, 21], 2, 2, 32, _ => new AttentionOptions { Causal = true, Softcap = 4f }),
        new VarlenCase("alibi-per-head", [6, 14], [6, 20], 3, 3, 16,
            _ => new AttentionOptions { Causal = true, AlibiSlopes = Tensor.Create([0.5f, 0.25f, 0.125f], [3]) }),
        // (batch, heads) slopes index sequences: sequence b alone runs with row b.
        new VarlenCase("alibi-per-sequence", [8, 0, 13], [8, 0, 13], 2, 1, 16, b => new AttentionOptions
        {
            AlibiSlopes = b is { } s ? Tensor.Create(SequenceSlopes[(2 * s)..(2 * s + 2)], [2]) : Tensor.Create(SequenceSlopes, [3, 2]),
        }),
        new VarlenCase("deterministic", [15, 4], [15, 4], 2, 2, 64, _ => new AttentionOptions { Causal = true, Deterministic = true }),
        // Queries without keys (output 0, LSE +inf) and keys without queries (dK = dV = 0): not comparable per sequence with
        // the fixed-length adapter, so only checked against the core (CPU) and the CPU path (CUDA).
        new VarlenCase(EmptySequences, [4, 0, 3, 5], [0, 5, 6, 5], 2, 1, 16, _ => new AttentionOptions { Causal = true }),
    }.ToDictionary(c => c.Name);

    public static VarlenCase Get(string name) => All[name];

    /// <summary>Every geometry with separate q, k, v, and the packed forms where the geometry allows them.</summary>
    public static IEnumerable<(string Name, TorchPacking Packing)> Packings()
    {
        foreach (string name in All.Keys.Where(name => name != EmptySequences))
            yield return (name, TorchPacking.Separate);
        foreach (string name in new[] { "plain", "window", "softcap" })
            yield return (name, TorchPacking.QkvPacked);
        foreach (string name in new[] { "causal-window-gqa", "alibi-per-sequence", "mqa-scale" })
            yield return (name, TorchPacking.KvPacked);
    }
}

/// <summary>Random inputs of a <see cref="VarlenCase"/> (float32, CPU) and the runners the varlen tests compare.</summary>
internal sealed class VarlenInputs
{
    public VarlenInputs(VarlenCase geometry, TestRandom random)
    {
        Case = geometry;
        Random = random;
        Q = TorchTest.Normal(random, [geometry.TotalQ, geometry.HeadsQ, geometry.HeadDim]);
        K = TorchTest.Normal(random, [geometry.TotalK, geometry.HeadsKv, geometry.HeadDim]);
        V = TorchTest.Normal(random, [geometry.TotalK, geometry.HeadsKv, geometry.HeadDim]);
        DOut = TorchTest.Normal(random, [geometry.TotalQ, geometry.HeadsQ, geometry.HeadDim]);
    }

    public VarlenCase Case { get; }
    public TestRandom Random { get; }
    public torch.Tensor Q { get; }
    public torch.Tensor K { get; }
    public torch.Tensor V { get; }
    public torch.Tensor DOut { get; }

    public string Context(TorchPacking packing, torch.ScalarType dtype, torch.Device device) => string.Create(CultureInfo.InvariantCulture,
        $"[{Case.Name}, {packing}, {dtype} on {device}, seqlens q [{string.Join(", ", Case.SeqlensQ)}] k [{string.Join(", ", Case.SeqlensK)}], " +
        $"heads {Case.HeadsQ}/{Case.HeadsKv}, d {Case.HeadDim}, seed {Random.Seed}]");

    /// <summary>The varlen adapter: output, LSE and dq, dk, dv (taken apart from packed gradients) after loss.backward().</summary>
    public (torch.Tensor Output, torch.Tensor LogSumExp, torch.Tensor[] Grads) RunVarlen(TorchPacking packing, torch.ScalarType dtype,
        torch.Device device, AttentionOptions? options = null)
    {
        options ??= Case.Options(null);
        torch.Tensor Leaf(torch.Tensor t) => t.to(dtype, device).detach().requires_grad_(true);
        var cuQ = torch.tensor(Case.CuQ).to(device);
        var cuK = torch.tensor(Case.CuK).to(device);
        torch.Tensor output, lse;
        Func<torch.Tensor[]> grads;
        switch (packing)
        {
            case TorchPacking.QkvPacked:
            {
                Assert.True(Case.SeqlensQ.SequenceEqual(Case.SeqlensK) && Case.HeadsQ == Case.HeadsKv, "qkv packing needs equal lengths and heads");
                var qkv = Leaf(torch.stack([Q, K, V], 1));
                (output, lse) = FlashAttentionTorch.AttentionVarlenQkvPackedWithLse(qkv, cuQ, Case.MaxQ, options);
                grads = () => [qkv.grad!.select(1, 0), qkv.grad!.select(1, 1), qkv.grad!.select(1, 2)];
                break;
            }
            case TorchPacking.KvPacked:
            {
                var q = Leaf(Q);
                var kv = Leaf(torch.stack([K, V], 1));
                (output, lse) = FlashAttentionTorch.AttentionVarlenKvPackedWithLse(q, kv, cuQ, cuK, Case.MaxQ, Case.MaxK, options);
                grads = () => [q.grad!, kv.grad!.select(1, 0), kv.grad!.select(1, 1)];
                break;
            }
            default:
            {
                var q = Leaf(Q);
                var k = Leaf(K);
                var v = Leaf(V);
                (output, lse) = FlashAttentionTorch.AttentionVarlenWithLse(q, k, v, cuQ, cuK, Case.MaxQ, Case.MaxK, options);
                grads = () => [q.grad!, k.grad!, v.grad!];
                break;
            }
        }
        Assert.Equal(Q.shape, output.shape);
        Assert.Equal(dtype, output.dtype);
        Assert.Equal(device.type, output.device_type);
        Assert.Equal(new long[] { Case.HeadsQ, Case.TotalQ }, lse.shape);
        Assert.Equal(torch.ScalarType.Float32, lse.dtype);
        Assert.False(lse.requires_grad);
        Assert.True(output.requires_grad);
        using var loss = (output * DOut.to(dtype, device)).sum();
        BackwardFailure.Run(() => loss.backward());
        var result = grads();
        foreach (var grad in result)
            Assert.Equal(dtype, grad.dtype);
        return (output, lse, result);
    }

    /// <summary>The fixed-length adapter run on each sequence alone (batch 1), outputs concatenated, gradients by torch's autograd
    /// through the slices. Sequences without queries are skipped.</summary>
    public (torch.Tensor Output, torch.Tensor[] Grads) RunPerSequence(torch.ScalarType dtype, torch.Device device)
    {
        var q = Q.to(dtype, device).detach().requires_grad_(true);
        var k = K.to(dtype, device).detach().requires_grad_(true);
        var v = V.to(dtype, device).detach().requires_grad_(true);
        int[] cuQ = Case.CuQ, cuK = Case.CuK;
        var outputs = new List<torch.Tensor>();
        for (int b = 0; b < Case.Batch; b++)
        {
            if (Case.SeqlensQ[b] == 0)
                continue;
            Assert.True(Case.SeqlensK[b] > 0, "a sequence with queries needs keys in the per-sequence comparison");
            var qs = q.narrow(0, cuQ[b], Case.SeqlensQ[b]).unsqueeze(0);
            var ks = k.narrow(0, cuK[b], Case.SeqlensK[b]).unsqueeze(0);
            var vs = v.narrow(0, cuK[b], Case.SeqlensK[b]).unsqueeze(0);
            outputs.Add(FlashAttentionTorch.Attention(qs, ks, vs, Case.Options(b)).squeeze(0));
        }
        var output = torch.cat(outputs, 0);
        using var loss = (output * DOut.to(dtype, device)).sum();
        BackwardFailure.Run(() => loss.backward());
        return (output, [q.grad!, k.grad!, v.grad!]);
    }

    /// <summary>A host copy in float32 for the core API.</summary>
    public static Tensor<float> Host(torch.Tensor tensor) =>
        Tensor.Create(Array.ConvertAll(TorchTest.Values(tensor), x => (float)x), Array.ConvertAll(tensor.shape, x => (nint)x));
}

/// <summary>
/// flash-attn's varlen functions through the TorchSharp adapter on CPU tensors: forward and backward (through
/// <c>loss.backward()</c>) against the fixed-length adapter run on each sequence alone, and against the core's CPU
/// <c>ForwardVarlen</c>/<c>BackwardVarlen</c> where the mask must be the same (dropout); the packed forms, the log-sum-exp,
/// the FlashPadding round trip against padded attention with a key padding mask, and argument validation. Skipped where
/// TorchSharp's native libraries cannot load.
/// </summary>
[Trait("Category", "TorchSharp")]
[Collection(TorchSharpCollection.Name)]
public sealed class TorchVarlenTests
{
    public static TheoryData<string, TorchPacking> Cases()
    {
        var data = new TheoryData<string, TorchPacking>();
        foreach (var (name, packing) in VarlenCase.Packings())
            data.Add(name, packing);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Float32MatchesTheFixedLengthAdapterPerSequence(string name, TorchPacking packing)
    {
        TorchSharpRequirement.SkipIfUnavailable();
        CheckAgainstPerSequence(name, packing, torch.ScalarType.Float32, 2e-5);
    }

    [Theory]
    [InlineData(torch.ScalarType.Float16, 2e-3)]
    [InlineData(torch.ScalarType.BFloat16, 1.6e-2)]
    public void HalfPrecisionMatchesTheFixedLengthAdapterPerSequence(torch.ScalarType dtype, double tolerance)
    {
        TorchSharpRequirement.SkipIfUnavailable();
        CheckAgainstPerSequence("causal-window-gqa", TorchPacking.Separate, dtype, tolerance);
        CheckAgainstPerSequence("softcap", TorchPacking.QkvPacked, dtype, tolerance);
    }

    private static void CheckAgainstPerSequence(string name, TorchPacking packing, torch.ScalarType dtype, double tolerance)
    {
        using var scope = torch.NewDisposeScope();
        var inputs = new VarlenInputs(VarlenCase.Get(name), new TestRandom());
        string context = inputs.Context(packing, dtype, torch.CPU);
        var (output, lse, grads) = inputs.RunVarlen(packing, dtype, torch.CPU);
        var (expected, expectedGrads) = inputs.RunPerSequence(dtype, torch.CPU);
        TorchCpuAttentionTests.AssertNear("output", output, expected, context, tolerance);
        string[] names = ["dq", "dk", "dv"];
        for (int i = 0; i < 3; i++)
            TorchCpuAttentionTests.AssertNear(names[i], grads[i], expectedGrads[i], context, tolerance);
        TorchTest.AssertFinite("lse", lse);
    }

    /// <summary>The LSE the WithLse forms return is the core's (heads_q, total_q) LSE, and the packed forms agree with it.</summary>
    [Fact]
    public void LogSumExpEqualsTheCoreApis()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var geometry = VarlenCase.Get("window");
        var inputs = new VarlenInputs(geometry, new TestRandom());
        var options = geometry.Options(null);
        var core = FlashAttention.ForwardVarlen<float>(VarlenInputs.Host(inputs.Q), VarlenInputs.Host(inputs.K), VarlenInputs.Host(inputs.V), geometry.CuQ,
            geometry.CuK, geometry.MaxQ, geometry.MaxK, options, TestContext.Current.CancellationToken);
        string context = $"seed {inputs.Random.Seed}";
        foreach (var packing in new[] { TorchPacking.Separate, TorchPacking.QkvPacked, TorchPacking.KvPacked })
        {
            var (output, lse, _) = inputs.RunVarlen(packing, torch.ScalarType.Float32, torch.CPU);
            Tolerance.AssertIdentical($"{packing} output", Array.ConvertAll(TorchTest.Values(output), x => (float)x), Flat(core.Output), context);
            Tolerance.AssertIdentical($"{packing} lse", Array.ConvertAll(TorchTest.Values(lse), x => (float)x), Flat(core.LogSumExp), context);
        }
    }

    /// <summary>
    /// Dropout with a fixed state: the adapter's output and gradients are the core's ForwardVarlen/BackwardVarlen results bit
    /// for bit (the same Philox mask, sequence index as batch index), for every packing, so forward and backward agree on it.
    /// </summary>
    [Theory]
    [InlineData(TorchPacking.Separate)]
    [InlineData(TorchPacking.QkvPacked)]
    [InlineData(TorchPacking.KvPacked)]
    public void DropoutEqualsTheCoreVarlenWithTheSameState(TorchPacking packing)
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var geometry = VarlenCase.Get(packing == TorchPacking.QkvPacked ? "window" : "causal");
        var random = new TestRandom();
        var inputs = new VarlenInputs(geometry, random);
        var options = geometry.Options(null) with { DropoutProbability = 0.25f, DropoutState = random.NextDropoutState() };
        string context = inputs.Context(packing, torch.ScalarType.Float32, torch.CPU);

        var (output, _, grads) = inputs.RunVarlen(packing, torch.ScalarType.Float32, torch.CPU, options);

        var ct = TestContext.Current.CancellationToken;
        Tensor<float> q = VarlenInputs.Host(inputs.Q), k = VarlenInputs.Host(inputs.K), v = VarlenInputs.Host(inputs.V);
        var core = FlashAttention.ForwardVarlen<float>(q, k, v, geometry.CuQ, geometry.CuK, geometry.MaxQ, geometry.MaxK, options, ct);
        Assert.Equal(options.DropoutState, core.DropoutState);
        var coreGrads = FlashAttention.BackwardVarlen<float>(VarlenInputs.Host(inputs.DOut), q, k, v, core.Output, core.LogSumExp, geometry.CuQ, geometry.CuK,
            geometry.MaxQ, geometry.MaxK, options, core.DropoutState, ct);
        Tolerance.AssertIdentical("output", Floats(output), Flat(core.Output), context);
        Tolerance.AssertIdentical("dq", Floats(grads[0]), Flat(coreGrads.DQ), context);
        Tolerance.AssertIdentical("dk", Floats(grads[1]), Flat(coreGrads.DK), context);
        Tolerance.AssertIdentical("dv", Floats(grads[2]), Flat(coreGrads.DV), context);
        // Dropout did drop something: the output differs from the one without dropout.
        var (plain, _, _) = inputs.RunVarlen(packing, torch.ScalarType.Float32, torch.CPU, geometry.Options(null));
        Assert.False(plain.equal(output).all().item<bool>(), $"dropout changed nothing {context}");
    }

    /// <summary>
    /// A sequence of queries without keys and one of keys without queries: the adapter equals the core's varlen forward and
    /// backward, the keyless rows give O = 0 and LSE = +inf, and the keys nobody queries get dK = dV = 0.
    /// </summary>
    [Theory]
    [InlineData(TorchPacking.Separate)]
    [InlineData(TorchPacking.KvPacked)]
    public void EmptySequencesEqualTheCoreVarlen(TorchPacking packing)
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var geometry = VarlenCase.Get(VarlenCase.EmptySequences);
        var inputs = new VarlenInputs(geometry, new TestRandom());
        var options = geometry.Options(null);
        string context = inputs.Context(packing, torch.ScalarType.Float32, torch.CPU);

        var (output, lse, grads) = inputs.RunVarlen(packing, torch.ScalarType.Float32, torch.CPU);

        var ct = TestContext.Current.CancellationToken;
        Tensor<float> q = VarlenInputs.Host(inputs.Q), k = VarlenInputs.Host(inputs.K), v = VarlenInputs.Host(inputs.V);
        var core = FlashAttention.ForwardVarlen<float>(q, k, v, geometry.CuQ, geometry.CuK, geometry.MaxQ, geometry.MaxK, options, ct);
        var coreGrads = FlashAttention.BackwardVarlen<float>(VarlenInputs.Host(inputs.DOut), q, k, v, core.Output, core.LogSumExp, geometry.CuQ,
            geometry.CuK, geometry.MaxQ, geometry.MaxK, options, core.DropoutState, ct);
        Tolerance.AssertIdentical("output", Floats(output), Flat(core.Output), context);
        Tolerance.AssertIdentical("lse", Floats(lse), Flat(core.LogSumExp), context);
        Tolerance.AssertIdentical("dq", Floats(grads[0]), Flat(coreGrads.DQ), context);
        Tolerance.AssertIdentical("dk", Floats(grads[1]), Flat(coreGrads.DK), context);
        Tolerance.AssertIdentical("dv", Floats(grads[2]), Flat(coreGrads.DV), context);

        // Sequence 0: 4 queries, no keys. Sequence 1: no queries, 5 keys (rows 0..4 of k and v).
        Assert.All(TorchTest.Values(output.narrow(0, 0, 4)), x => Assert.Equal(0.0, x));
        Assert.All(TorchTest.Values(grads[0].narrow(0, 0, 4)), x => Assert.Equal(0.0, x));
        Assert.All(TorchTest.Values(lse.narrow(1, 0, 4)), x => Assert.Equal(double.PositiveInfinity, x));
        Assert.All(TorchTest.Values(grads[1].narrow(0, 0, 5)), x => Assert.Equal(0.0, x));
        Assert.All(TorchTest.Values(grads[2].narrow(0, 0, 5)), x => Assert.Equal(0.0, x));
        TorchTest.AssertFinite("output", output);
    }

    [Fact]
    public void DropoutWithoutAStateDrawsAFreshMaskEachCall()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var q = TorchTest.Normal(new TestRandom(), [24, 2, 16]);
        var cu = torch.tensor(new[] { 0, 10, 24 });
        var options = new AttentionOptions { DropoutProbability = 0.5f };
        var first = FlashAttentionTorch.AttentionVarlen(q, q, q, cu, cu, 14, 14, options);
        var second = FlashAttentionTorch.AttentionVarlen(q, q, q, cu, cu, 14, 14, options);
        Assert.False(first.equal(second).all().item<bool>(), "two calls without a dropout state drew the same mask");
    }

    /// <summary>Separate q, k, v that are strided views of one fused projection equal the qkv-packed call, gradients included.</summary>
    [Fact]
    public void StridedViewsOfAFusedProjectionEqualThePackedCall()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var random = new TestRandom();
        var fused = TorchTest.Normal(random, [30, 3 * 2 * 16]);
        var qkv = fused.view(30, 3, 2, 16).detach().requires_grad_(true);
        var leaf = fused.detach().requires_grad_(true);
        var views = leaf.view(30, 3, 2, 16);
        var (q, k, v) = (views.select(1, 0), views.select(1, 1), views.select(1, 2));
        Assert.False(q.is_contiguous());
        var cu = torch.tensor(new[] { 0, 11, 11, 30 });
        var dOut = TorchTest.Normal(random, [30, 2, 16]);
        var options = new AttentionOptions { Causal = true };

        var packed = FlashAttentionTorch.AttentionVarlenQkvPacked(qkv, cu, 19, options);
        var separate = FlashAttentionTorch.AttentionVarlen(q, k, v, cu, cu, 19, 19, options);
        BackwardFailure.Run(() => (packed * dOut).sum().backward());
        BackwardFailure.Run(() => (separate * dOut).sum().backward());

        string context = $"seed {random.Seed}";
        TorchCpuAttentionTests.AssertNear("output", separate, packed, context, 0);
        TorchCpuAttentionTests.AssertNear("dqkv", leaf.grad!.view(30, 3, 2, 16), qkv.grad!, context, 0);
    }

    /// <summary>
    /// FlashPadding.Unpad, varlen attention and FlashPadding.Pad against attention over the padded batch with a key padding
    /// mask (float64 torch, padded query rows zeroed): outputs, and gradients with respect to the padded q, k and v (zero at
    /// the padding).
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void UnpadVarlenPadEqualsPaddedAttentionWithAKeyPaddingMask(bool causal)
    {
        TorchSharpRequirement.SkipIfUnavailable();
        PaddedRoundTrip.Check(causal, torch.ScalarType.Float32, torch.CPU, 1e-5);
    }

    [Fact]
    public void NoGradInputsGiveAPlainTensor()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var q = TorchTest.Normal(new TestRandom(), [9, 2, 8]);
        var cu = torch.tensor(new[] { 0, 4, 9 });
        var (output, lse) = FlashAttentionTorch.AttentionVarlenWithLse(q, q, q, cu, cu, 5, 5);
        Assert.False(output.requires_grad);
        Assert.False(lse.requires_grad);
        using (torch.no_grad())
        {
            var qg = q.clone().requires_grad_(true);
            Assert.False(FlashAttentionTorch.AttentionVarlen(qg, qg, qg, cu, cu, 5, 5).requires_grad);
        }
    }

    /// <summary>Offsets that are a strided view are read through their stride; the call does not keep the caller's tensors.</summary>
    [Fact]
    public void StridedOffsetsAreReadThroughTheirStride()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var random = new TestRandom();
        var q = TorchTest.Normal(random, [12, 2, 8]).requires_grad_(true);
        var wide = torch.tensor(new[] { 0, -1, 5, -1, 12 });
        var strided = wide.slice(0, 0, 5, 2);
        Assert.Equal(2, strided.stride(0));
        var dense = torch.tensor(new[] { 0, 5, 12 });
        var expected = FlashAttentionTorch.AttentionVarlen(q, q, q, dense, dense, 7, 7);
        var output = FlashAttentionTorch.AttentionVarlen(q, q, q, strided, strided, 7, 7);
        TorchCpuAttentionTests.AssertNear("output", output, expected, $"seed {random.Seed}", 0);
        wide.Dispose();
        strided.Dispose();
        BackwardFailure.Run(() => output.sum().backward());
        TorchTest.AssertFinite("dq", q.grad!);
    }

    /// <summary>
    /// The offsets are saved for backward like the inputs (as flash-attn saves cu_seqlens): modified in place after forward,
    /// torch refuses to hand them back inside our backward, and the failure comes out of loss.backward() with its cause kept.
    /// </summary>
    [Fact]
    public void OffsetsModifiedAfterForwardFailTheBackward()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var q = TorchTest.Normal(new TestRandom(), [9, 2, 8]).requires_grad_(true);
        var cu = torch.tensor(new[] { 0, 4, 9 });
        var output = FlashAttentionTorch.AttentionVarlen(q, q, q, cu, cu, 5, 5);
        cu.mul_(1);
        FlashAttentionTorch.ClearLastBackwardException();
        var error = Assert.ThrowsAny<Exception>(() => output.sum().backward());
        Assert.Contains("invalid gradient", error.Message, StringComparison.OrdinalIgnoreCase);
        var cause = FlashAttentionTorch.LastBackwardException;
        Assert.NotNull(cause);
        Assert.Contains("inplace", cause.Message.Replace("in-place", "inplace", StringComparison.Ordinal), StringComparison.OrdinalIgnoreCase);
    }

    private static void Rejects<TException>(string paramName, Action action) where TException : ArgumentException
    {
        var exception = Assert.ThrowsAny<TException>(action);
        Assert.Equal(paramName, exception.ParamName);
    }

    [Fact]
    public void BadArgumentsNameTheArgument()
    {
        TorchSharpRequirement.SkipIfUnavailable();
        using var scope = torch.NewDisposeScope();
        var q = torch.randn(9, 2, 16);
        var k = torch.randn(7, 1, 16);
        var cuQ = torch.tensor(new[] { 0, 4, 9 });
        var cuK = torch.tensor(new[] { 0, 3, 7 });
        var qkv = torch.randn(9, 3, 2, 16);
        var kv = torch.randn(7, 2, 1, 16);

        // cu_seqlens: dtype, rank, length, contents, device (CUDA tests), null.
        var e = Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionVarlen(q, k, k, cuQ.to(torch.ScalarType.Int64), cuK, 5, 4));
        Assert.Equal("cuSeqlensQ", e.ParamName);
        Assert.Contains("int32", e.Message);
        Rejects<ArgumentException>("cuSeqlensK", () => FlashAttentionTorch.AttentionVarlen(q, k, k, cuQ, cuK.to(torch.ScalarType.Float32), 5, 4));
        Rejects<ArgumentException>("cuSeqlensQ", () => FlashAttentionTorch.AttentionVarlen(q, k, k, cuQ.unsqueeze(0), cuK, 5, 4));
        Rejects<ArgumentException>("cuSeqlensQ", () => FlashAttentionTorch.AttentionVarlen(q, k, k, torch.empty(new long[] { 0 }, torch.ScalarType.Int32), cuK, 5, 4));
        Rejects<ArgumentException>("cuSeqlensK", () => FlashAttentionTorch.AttentionVarlen(q, k, k, cuQ, torch.tensor(new[] { 0, 7 }), 5, 4));
        Rejects<ArgumentException>("cuSeqlensQ", () => FlashAttentionTorch.AttentionVarlen(q, k, k, torch.tensor(new[] { 0, 4, 8 }), cuK, 5, 4));
        Rejects<ArgumentException>("cuSeqlensQ", () => FlashAttentionTorch.AttentionVarlen(q, k, k, torch.tensor(new[] { 1, 4, 9 }), cuK, 5, 4));
        Rejects<ArgumentException>("cuSeqlensK", () => FlashAttentionTorch.AttentionVarlen(q, k, k, cuQ, torch.tensor(new[] { 0, 3, 2 }), 5, 4));
        Rejects<ArgumentNullException>("cuSeqlensQ", () => FlashAttentionTorch.AttentionVarlen(q, k, k, null!, cuK, 5, 4));
        // Maximum lengths.
        Rejects<ArgumentException>("maxSeqlenQ", () => FlashAttentionTorch.AttentionVarlen(q, k, k, cuQ, cuK, 4, 4));
        Rejects<ArgumentException>("maxSeqlenK", () => FlashAttentionTorch.AttentionVarlen(q, k, k, cuQ, cuK, 5, -1));
        Rejects<ArgumentException>("maxSeqlenK", () => FlashAttentionTorch.AttentionVarlen(q, k, k, cuQ, cuK, 5, 8));
        Rejects<ArgumentException>("maxSeqlen", () => FlashAttentionTorch.AttentionVarlenQkvPacked(qkv, cuQ, 3));
        // Inputs: rank, packing, heads, head dim, dtype, null, options.
        Rejects<ArgumentException>("q", () => FlashAttentionTorch.AttentionVarlen(q.unsqueeze(0), k, k, cuQ, cuK, 5, 4));
        Rejects<ArgumentException>("v", () => FlashAttentionTorch.AttentionVarlen(q, k, torch.randn(7, 2, 16), cuQ, cuK, 5, 4));
        Rejects<ArgumentException>("k", () => FlashAttentionTorch.AttentionVarlen(q, torch.randn(7, 1, 8), torch.randn(7, 1, 8), cuQ, cuK, 5, 4));
        Rejects<ArgumentException>("k", () => FlashAttentionTorch.AttentionVarlen(torch.randn(9, 3, 16), torch.randn(7, 2, 16), torch.randn(7, 2, 16), cuQ, cuK, 5, 4));
        Rejects<ArgumentException>("k", () => FlashAttentionTorch.AttentionVarlen(q, k.to(torch.ScalarType.Float64), k, cuQ, cuK, 5, 4));
        Rejects<ArgumentException>("qkv", () => FlashAttentionTorch.AttentionVarlenQkvPacked(torch.randn(9, 2, 2, 16), cuQ, 5));
        Rejects<ArgumentException>("qkv", () => FlashAttentionTorch.AttentionVarlenQkvPacked(q, cuQ, 5));
        Rejects<ArgumentException>("kv", () => FlashAttentionTorch.AttentionVarlenKvPacked(q, torch.randn(7, 3, 1, 16), cuQ, cuK, 5, 4));
        Rejects<ArgumentException>("kv", () => FlashAttentionTorch.AttentionVarlenKvPacked(q, torch.randn(7, 2, 1, 8), cuQ, cuK, 5, 4));
        Rejects<ArgumentException>("q", () => FlashAttentionTorch.AttentionVarlen(torch.randn(9, 2, 300), torch.randn(7, 1, 300), torch.randn(7, 1, 300), cuQ, cuK, 5, 4));
        Rejects<ArgumentNullException>("v", () => FlashAttentionTorch.AttentionVarlen(q, k, null!, cuQ, cuK, 5, 4));
        var f64 = Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionVarlen(q.to(torch.ScalarType.Float64), k.to(torch.ScalarType.Float64),
            k.to(torch.ScalarType.Float64), cuQ, cuK, 5, 4));
        Assert.Contains("float32, float16 and bfloat16", f64.Message);
        Rejects<ArgumentException>("options", () => FlashAttentionTorch.AttentionVarlen(q, k, k, cuQ, cuK, 5, 4, new AttentionOptions { ReturnProbabilities = true }));
        // The core's own checks still apply (ALiBi slopes of the wrong shape).
        Assert.ThrowsAny<ArgumentException>(() => FlashAttentionTorch.AttentionVarlen(q, k, k, cuQ, cuK, 5, 4,
            new AttentionOptions { AlibiSlopes = Tensor.Create([0.1f, 0.2f, 0.3f], [3]) }));
        // The good call passes.
        Assert.Equal(q.shape, FlashAttentionTorch.AttentionVarlen(q, k, k, cuQ, cuK, 5, 4).shape);
        Assert.Equal(q.shape, FlashAttentionTorch.AttentionVarlenKvPacked(q, kv, cuQ, cuK, 5, 4).shape);
    }

    internal static float[] Flat(Tensor<float> tensor)
    {
        var values = new float[tensor.FlattenedLength];
        tensor.FlattenTo(values);
        return values;
    }

    internal static float[] Floats(torch.Tensor tensor) => Array.ConvertAll(TorchTest.Values(tensor), x => (float)x);
}

/// <summary>The FlashPadding round trip (unpad, varlen attention, pad) against padded attention with a key padding mask.</summary>
internal static class PaddedRoundTrip
{
    private const int Batch = 4, Seqlen = 9, HeadsQ = 4, HeadsKv = 2, HeadDim = 16;

    /// <summary>Holes anywhere for the non-causal case (a gap, left padding, a full row); right padding for the causal one,
    /// where positions within a sequence must be the padded positions. No row is empty (the reference would give NaN).</summary>
    private static bool[] Mask(bool causal) => causal
        ?
        [
            true, true, true, true, true, false, false, false, false,
            true, true, true, true, true, true, true, true, true,
            true, true, false, false, false, false, false, false, false,
            true, true, true, true, true, true, true, false, false,
        ]
        :
        [
            true, false, true, true, false, true, true, false, false,
            false, false, false, true, true, true, true, true, true,
            true, true, true, true, true, true, true, true, true,
            false, true, false, false, false, false, false, false, false,
        ];

    /// <summary>Runs the round trip in <paramref name="dtype"/> on <paramref name="device"/> and returns the padded output
    /// and the gradients of the padded q, k, v.</summary>
    public static (torch.Tensor Output, torch.Tensor[] Grads) Run(torch.Tensor q, torch.Tensor k, torch.Tensor v, torch.Tensor dOut, bool causal,
        torch.ScalarType dtype, torch.Device device)
    {
        var mask = torch.tensor(Mask(causal), [Batch, Seqlen]).to(device);
        var ql = q.to(dtype, device).detach().requires_grad_(true);
        var kl = k.to(dtype, device).detach().requires_grad_(true);
        var vl = v.to(dtype, device).detach().requires_grad_(true);
        using var qb = FlashPadding.Unpad(ql, mask);
        using var kb = FlashPadding.Unpad(kl, mask);
        using var vb = FlashPadding.Unpad(vl, mask);
        var unpadded = FlashAttentionTorch.AttentionVarlen(qb.Unpadded, kb.Unpadded, vb.Unpadded, qb.CumulativeSeqlens, kb.CumulativeSeqlens,
            qb.MaxSeqlen, kb.MaxSeqlen, new AttentionOptions { Causal = causal });
        var output = qb.Pad(unpadded);
        using var loss = (output * dOut.to(dtype, device)).sum();
        BackwardFailure.Run(() => loss.backward());
        return (output, [ql.grad!, kl.grad!, vl.grad!]);
    }

    public static void Check(bool causal, torch.ScalarType dtype, torch.Device device, double tolerance)
    {
        using var scope = torch.NewDisposeScope();
        var random = new TestRandom();
        string context = $"[causal {causal}, {dtype} on {device}, seed {random.Seed}]";
        var q = TorchTest.Normal(random, [Batch, Seqlen, HeadsQ, HeadDim]);
        var k = TorchTest.Normal(random, [Batch, Seqlen, HeadsKv, HeadDim]);
        var v = TorchTest.Normal(random, [Batch, Seqlen, HeadsKv, HeadDim]);
        var dOut = TorchTest.Normal(random, [Batch, Seqlen, HeadsQ, HeadDim]);

        var (output, grads) = Run(q, k, v, dOut, causal, dtype, device);

        // Reference: float64 attention over the padded batch, padded keys masked out, padded query rows zeroed.
        var mask = torch.tensor(Mask(causal), [Batch, Seqlen]);
        var q64 = TorchTest.Leaf(q, torch.ScalarType.Float64);
        var k64 = TorchTest.Leaf(k, torch.ScalarType.Float64);
        var v64 = TorchTest.Leaf(v, torch.ScalarType.Float64);
        var kr = k64.repeat_interleave(HeadsQ / HeadsKv, 2).transpose(1, 2);
        var vr = v64.repeat_interleave(HeadsQ / HeadsKv, 2).transpose(1, 2);
        var scores = torch.matmul(q64.transpose(1, 2), kr.transpose(-2, -1)).mul(1.0 / Math.Sqrt(HeadDim));
        var hidden = mask.logical_not().unsqueeze(1).unsqueeze(1); // (batch, 1, 1, seqlen_k)
        if (causal)
            hidden = hidden.logical_or(torch.ones(Seqlen, Seqlen, torch.ScalarType.Bool).triu(1));
        scores = scores.masked_fill(hidden, double.NegativeInfinity);
        var reference = torch.matmul(torch.softmax(scores, -1), vr).transpose(1, 2)
            .mul(mask.unsqueeze(-1).unsqueeze(-1).to(torch.ScalarType.Float64));
        reference.mul(dOut.to(torch.ScalarType.Float64)).sum().backward();

        TorchCpuAttentionTests.AssertNear("output", output, reference, context, tolerance);
        TorchCpuAttentionTests.AssertNear("dq", grads[0], q64.grad!, context, tolerance);
        TorchCpuAttentionTests.AssertNear("dk", grads[1], k64.grad!, context, tolerance);
        TorchCpuAttentionTests.AssertNear("dv", grads[2], v64.grad!, context, tolerance);
    }
}

/// <summary>
/// The varlen adapter on CUDA tensors (fp16/bf16, the core's CUDA varlen kernels with device cu_seqlens, launched on the
/// legacy default stream) against the same calls on CPU tensors: the float32 CPU run is the reference and the CPU run in
/// the precision under test the naive baseline of DESIGN.md's rule (dropout included: both paths draw the same Philox
/// mask). Skipped unless TorchSharp loads, torch sees a CUDA device and our CUDA path can use it.
/// </summary>
[Trait("Category", "TorchSharp")]
[Trait("Category", "Cuda")]
[Collection(TorchSharpCollection.Name)]
public sealed class TorchVarlenCudaTests
{
    public static TheoryData<string, TorchPacking, torch.ScalarType> Cases()
    {
        var data = new TheoryData<string, TorchPacking, torch.ScalarType>();
        foreach (var (name, packing) in VarlenCase.Packings())
        {
            data.Add(name, packing, torch.ScalarType.BFloat16);
            data.Add(name, packing, torch.ScalarType.Float16);
        }
        return data;
    }

    [Theory]
    [Trait("Category", "CudaBackward")]
    [MemberData(nameof(Cases))]
    public void ForwardAndBackwardMatchTheCpuPath(string name, TorchPacking packing, torch.ScalarType dtype)
    {
        TorchSharpRequirement.SkipIfNoCuda();
        using var scope = torch.NewDisposeScope();
        var geometry = VarlenCase.Get(name);
        var inputs = RoundedInputs(geometry, dtype);
        Check(inputs, packing, dtype, geometry.Options(null));
    }

    [Theory]
    [Trait("Category", "CudaBackward")]
    [InlineData(TorchPacking.Separate, torch.ScalarType.BFloat16)]
    [InlineData(TorchPacking.QkvPacked, torch.ScalarType.Float16)]
    [InlineData(TorchPacking.KvPacked, torch.ScalarType.BFloat16)]
    public void DropoutMatchesTheCpuPathWithTheSameState(TorchPacking packing, torch.ScalarType dtype)
    {
        TorchSharpRequirement.SkipIfNoCuda();
        using var scope = torch.NewDisposeScope();
        var geometry = VarlenCase.Get(packing == TorchPacking.QkvPacked ? "window" : "causal");
        var inputs = RoundedInputs(geometry, dtype);
        var options = geometry.Options(null) with { DropoutProbability = 0.2f, DropoutState = inputs.Random.NextDropoutState() };
        Check(inputs, packing, dtype, options);
    }

    /// <summary>Queries without keys (O = 0, LSE = +inf exactly) and keys without queries (dK = dV = 0): the kernels must write
    /// those rows, since torch allocates the outputs and gradients uninitialised.</summary>
    [Theory]
    [Trait("Category", "CudaBackward")]
    [InlineData(TorchPacking.Separate, torch.ScalarType.BFloat16)]
    [InlineData(TorchPacking.KvPacked, torch.ScalarType.Float16)]
    public void EmptySequencesMatchTheCpuPath(TorchPacking packing, torch.ScalarType dtype)
    {
        TorchSharpRequirement.SkipIfNoCuda();
        using var scope = torch.NewDisposeScope();
        var geometry = VarlenCase.Get(VarlenCase.EmptySequences);
        Check(RoundedInputs(geometry, dtype), packing, dtype, geometry.Options(null));
    }

    [Theory]
    [Trait("Category", "CudaBackward")]
    [InlineData(false)]
    [InlineData(true)]
    public void UnpadVarlenPadMatchesTheCpuPath(bool causal)
    {
        TorchSharpRequirement.SkipIfNoCuda();
        using var scope = torch.NewDisposeScope();
        const torch.ScalarType dtype = torch.ScalarType.BFloat16;
        var random = new TestRandom();
        string context = $"[causal {causal}, seed {random.Seed}]";
        torch.Tensor Rounded(long[] shape) => TorchTest.Normal(random, shape).to(dtype).to(torch.ScalarType.Float32);
        var q = Rounded([4, 9, 4, 16]);
        var k = Rounded([4, 9, 2, 16]);
        var v = Rounded([4, 9, 2, 16]);
        var dOut = Rounded([4, 9, 4, 16]);
        var (output, grads) = PaddedRoundTrip.Run(q, k, v, dOut, causal, dtype, torch.CUDA);
        var (refOutput, refGrads) = PaddedRoundTrip.Run(q, k, v, dOut, causal, torch.ScalarType.Float32, torch.CPU);
        var (naiveOutput, naiveGrads) = PaddedRoundTrip.Run(q, k, v, dOut, causal, dtype, torch.CPU);
        double floor = TorchAttentionCheck.FloorUnit(dtype);
        Tolerance.AssertClose("output", TorchTest.Values(output), TorchTest.Values(refOutput), TorchTest.Values(naiveOutput), floor, context);
        string[] names = ["dq", "dk", "dv"];
        for (int i = 0; i < 3; i++)
            Tolerance.AssertClose(names[i], TorchTest.Values(grads[i]), TorchTest.Values(refGrads[i]), TorchTest.Values(naiveGrads[i]), floor, context);
    }

    [Fact]
    public void BadArgumentsNameTheArgument()
    {
        TorchSharpRequirement.SkipIfNoCuda();
        using var scope = torch.NewDisposeScope();
        var q = torch.randn([9, 2, 64], torch.ScalarType.BFloat16, torch.CUDA);
        var cu = torch.tensor(new[] { 0, 4, 9 });
        var cuda = cu.cuda();
        var e = Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionVarlen(q, q, q, cu, cuda, 5, 5));
        Assert.Equal("cuSeqlensQ", e.ParamName);
        Assert.Contains("device", e.Message);
        Assert.Equal("cuSeqlensK", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionVarlen(q, q, q, cuda, cu, 5, 5)).ParamName);
        Assert.Equal("cuSeqlensQ", Assert.Throws<ArgumentException>(() =>
            FlashAttentionTorch.AttentionVarlen(q, q, q, cuda.to(torch.ScalarType.Int64), cuda, 5, 5)).ParamName);
        Assert.Equal("maxSeqlenQ", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionVarlen(q, q, q, cuda, cuda, 10, 5)).ParamName);
        Assert.Equal("k", Assert.Throws<ArgumentException>(() => FlashAttentionTorch.AttentionVarlen(q, q.cpu(), q, cuda, cuda, 5, 5)).ParamName);
        var f32 = q.to(torch.ScalarType.Float32);
        Assert.Contains("fp16/bf16", Assert.Throws<NotSupportedException>(() => FlashAttentionTorch.AttentionVarlen(f32, f32, f32, cuda, cuda, 5, 5)).Message);
    }

    /// <summary>The forward's results are copied into torch's tensors on the legacy stream: torch work queued right after sees
    /// them (repeated to give a race a chance to show).</summary>
    [Fact]
    public void TorchWorkAfterTheForwardSeesItsResult()
    {
        TorchSharpRequirement.SkipIfNoCuda();
        var random = new TestRandom();
        using var scope = torch.NewDisposeScope();
        var q = TorchTest.Normal(random, [4096, 8, 128], torch.ScalarType.BFloat16, torch.CUDA);
        var cu = torch.tensor(new[] { 0, 1000, 1024, 3000, 4096 }).cuda();
        var options = new AttentionOptions { Causal = true };
        var (first, firstLse) = FlashAttentionTorch.AttentionVarlenWithLse(q, q, q, cu, cu, 1976, 1976, options);
        float expected = first.@float().sum().item<float>(), expectedLse = firstLse.sum().item<float>();
        for (int i = 0; i < 5; i++)
        {
            var (output, lse) = FlashAttentionTorch.AttentionVarlenWithLse(q, q, q, cu, cu, 1976, 1976, options);
            Assert.Equal(expected, output.@float().sum().item<float>());
            Assert.Equal(expectedLse, lse.sum().item<float>());
        }
    }

    /// <summary>Inputs rounded to <paramref name="dtype"/> (held in float32), so every run sees the same values.</summary>
    private static VarlenInputs RoundedInputs(VarlenCase geometry, torch.ScalarType dtype)
    {
        var inputs = new VarlenInputs(geometry, new TestRandom());
        foreach (var tensor in new[] { inputs.Q, inputs.K, inputs.V, inputs.DOut })
            tensor.copy_(tensor.to(dtype).to(torch.ScalarType.Float32));
        return inputs;
    }

    private static void Check(VarlenInputs inputs, TorchPacking packing, torch.ScalarType dtype, AttentionOptions options)
    {
        string context = inputs.Context(packing, dtype, torch.CUDA);
        var (output, lse, grads) = inputs.RunVarlen(packing, dtype, torch.CUDA, options);
        var (refOutput, refLse, refGrads) = inputs.RunVarlen(packing, torch.ScalarType.Float32, torch.CPU, options);
        var (naiveOutput, naiveLse, naiveGrads) = inputs.RunVarlen(packing, dtype, torch.CPU, options);
        double floor = TorchAttentionCheck.FloorUnit(dtype);
        Tolerance.AssertClose("output", TorchTest.Values(output), TorchTest.Values(refOutput), TorchTest.Values(naiveOutput), floor, context);
        Tolerance.AssertClose("lse", TorchTest.Values(lse), TorchTest.Values(refLse), TorchTest.Values(naiveLse), floor, context);
        string[] names = ["dq", "dk", "dv"];
        for (int i = 0; i < 3; i++)
            Tolerance.AssertClose(names[i], TorchTest.Values(grads[i]), TorchTest.Values(refGrads[i]), TorchTest.Values(naiveGrads[i]), floor, context);
    }
}
