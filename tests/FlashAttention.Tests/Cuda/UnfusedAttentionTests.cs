using FlashAttn.Cuda;
using FlashAttn.Reference;
using FlashAttn.Tests.Infrastructure;
using FlashAttn.Validation;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The unfused CUDA baseline (cuBLAS S = scale * Q K^T, row softmax in place, cuBLAS O = P V) against the float64
/// reference. Outputs are poisoned (all bits set: NaN) before every run, so an element it fails to write fails.
/// </summary>
/// <remarks>
/// Tolerance. DESIGN's rule bounds the error by 2 * max|naive_P - ref64| + u_P * max(1, max|ref64|), with naive_P
/// keeping every intermediate in fp32. This baseline stores S and P in the input dtype (as PyTorch's math path does, the
/// point of the comparison), and that rounding alone puts O outside the rule: a CPU model of exactly those roundings
/// (<see cref="UnfusedModel{T}"/>) reaches 1.3x the rule's bound on O for these shapes (LSE stays below 0.85x). So the
/// rule is applied with naive_P = that model, i.e. the unfused computation as it is done in precision P, which is also
/// what flash-attn's own tests take as their baseline (attention_ref with upcast=False). The bound stays within ~3x the
/// rule's, orders of magnitude below a semantic error (a wrong mask, scale or head moves O by 1e-1).
/// </remarks>
[Trait("Category", "Cuda")]
public sealed class UnfusedAttentionTests
{
    public static TheoryData<int, int, int, int, int, int, bool> Shapes => new()
    {
        { 1, 1, 1, 1, 1, 64, false },       // one query, one key
        { 2, 17, 113, 4, 2, 40, false },    // seqlen_q < seqlen_k, GQA 4:2 (K, V broadcast with stride 0), odd row length
        { 1, 113, 17, 4, 2, 40, true },     // seqlen_q > seqlen_k causal: leading rows see no key (P = 0, LSE = +inf)
        { 2, 128, 256, 4, 4, 64, true },    // vectorised rows; one GEMM per batch item over all heads
        { 3, 64, 64, 2, 2, 128, false },    // batch > heads: one GEMM per head over the batch
        { 3, 33, 48, 4, 2, 64, true },      // the same with GQA
        { 1, 200, 333, 3, 3, 128, false },
        { 1, 77, 77, 2, 2, 59, true },      // odd head dim: odd leading dimensions and misaligned heads
        { 1, 40, 1100, 4, 2, 64, true },    // a block per row (seqlen_k > 1024), scalar path
        { 2, 24, 2048, 4, 1, 64, false },   // a block per row, vectorised; MQA
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Fp16MatchesReference(int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal)
    {
        GpuRequirement.SkipIfUnavailable();
        Check<Half>(new Problem(batch, seqlenQ, seqlenK, headsQ, headsKv, headDim), new AttentionOptions { Causal = causal }, OnGpu);
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Bf16MatchesReference(int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal)
    {
        GpuRequirement.SkipIfUnavailable();
        Check<BFloat16>(new Problem(batch, seqlenQ, seqlenK, headsQ, headsKv, headDim), new AttentionOptions { Causal = causal }, OnGpu);
    }

    [Theory]
    [InlineData(32, 16)]
    [InlineData(-1, 0)]
    [InlineData(0, 0)]
    [InlineData(100, -1)]
    [InlineData(7, 70)]
    public void SlidingWindowMatchesReference(int left, int right)
    {
        GpuRequirement.SkipIfUnavailable();
        var options = new AttentionOptions { WindowLeft = left, WindowRight = right };
        Check<BFloat16>(new Problem(2, 300, 357, 4, 2, 64), options, OnGpu);
        Check<Half>(new Problem(1, 357, 300, 2, 2, 128), options, OnGpu);
        Check<Half>(new Problem(1, 64, 1536, 2, 2, 64), options, OnGpu); // block per row with a window
    }

    [Fact]
    public void CustomScaleMatchesReference()
    {
        GpuRequirement.SkipIfUnavailable();
        Check<Half>(new Problem(1, 150, 150, 2, 2, 64), new AttentionOptions { SoftmaxScale = 0.37f, Causal = true }, OnGpu);
    }

    [Fact]
    public void PackedQkvViewsAreReadThroughStrides()
    {
        GpuRequirement.SkipIfUnavailable();
        Check<BFloat16>(new Problem(2, 97, 97, 3, 3, 64), new AttentionOptions { Causal = true }, OnGpuPacked);
    }

    [Fact]
    public void NoKeysGiveZeroOutputAndInfiniteLse()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        var p = new Problem(2, 5, 0, 2, 2, 64);
        var inputs = Inputs<Half>.Create(p);
        using var q = CudaTensor<Half>.FromHost(inputs.QTensor, device);
        using var kv = CudaTensor<Half>.Allocate(p.KvLengths, device);
        var (result, workspace) = Run(q, kv, kv, p, AttentionOptions.Default);
        Assert.Equal(0, workspace);
        Assert.All(Precision<Half>.Flatten(result.Output), x => Assert.Equal(0.0, x));
        Assert.All(Flat.Of(result.LogSumExp), x => Assert.Equal(double.PositiveInfinity, x));
    }

    [Fact]
    public void UnsupportedFeaturesAreRejectedByName()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        var shape = ProblemShape.Fixed(1, 8, 8, 2, 2, 64);
        NotSupportedException Reject(AttentionOptions options) => Assert.Throws<NotSupportedException>(() =>
            UnfusedAttention.Forward<Half>(device, shape, AttentionSettings.Resolve(options, shape, null), default, default, default, default, default,
                CudaStream.Legacy));
        Assert.Contains("dropout", Reject(new AttentionOptions { DropoutProbability = 0.1f }).Message);
        Assert.Contains("softcap", Reject(new AttentionOptions { Softcap = 30f }).Message);
        Assert.Contains("ALiBi", Reject(new AttentionOptions { AlibiSlopes = Tensor.Create([0.5f, 0.25f], [2]) }).Message);

        var varlen = new ProblemShape
        {
            HeadsQ = 2, HeadsKv = 2, HeadDim = 64, IsVarlen = true, QStart = [0, 3], QLength = [3, 5], KStart = [0, 3], KLength = [3, 5],
            TotalQ = 8, MaxSeqlenQ = 5, MaxSeqlenK = 5,
        };
        var error = Assert.Throws<NotSupportedException>(() => UnfusedAttention.Forward<Half>(device, varlen,
            AttentionSettings.Resolve(AttentionOptions.Default, varlen, null), default, default, default, default, default, CudaStream.Legacy));
        Assert.Contains("varlen", error.Message);
    }

    [Fact]
    public void ScoreMatrixThatDoesNotFitThrowsOutOfMemory()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        // 16 heads of 2^17 x 2^17 fp16 scores: 512 GiB, more than any GPU has. The allocation fails before anything reads
        // the operands, so they need no memory behind them.
        const int seqlen = 1 << 17, heads = 16, dim = 8;
        var shape = ProblemShape.Fixed(1, seqlen, seqlen, heads, heads, dim);
        var operand = new DeviceOperand(0, (long)seqlen * heads * dim, heads * dim, dim);
        var error = Assert.Throws<CudaOutOfMemoryException>(() => UnfusedAttention.Forward<Half>(device, shape,
            AttentionSettings.Resolve(AttentionOptions.Default, shape, null), operand, operand, operand, operand, new DeviceOperand(0, heads * (long)seqlen, 1, seqlen),
            CudaStream.Legacy));
        Assert.Equal((long)heads * seqlen * seqlen * 2, error.RequestedBytes);
    }

    /// <summary>DESIGN's rule with naive_P = <see cref="UnfusedModel{T}"/> (see the class remarks), for O and LSE.</summary>
    private static void Check<T>(Problem problem, AttentionOptions options, Func<Inputs<T>, AttentionOptions, AttentionResult<T>> run)
        where T : unmanaged
    {
        var inputs = Inputs<T>.Create(problem);
        var result = run(inputs, options);
        string context = AttentionCheck.Context<T>(problem, options, inputs.Random);
        var settings = ReferenceSettings.From(options, problem.HeadDim, problem.Batch, problem.HeadsQ);
        var ref64 = ReferenceAttention.Forward(problem.Shape, settings, Precision<T>.ToDoubles(inputs.Q), Precision<T>.ToDoubles(inputs.K),
            Precision<T>.ToDoubles(inputs.V));
        var (naiveOutput, naiveLse) = UnfusedModel(problem, settings, inputs);

        Assert.Equal(problem.QLengths, result.Output.Lengths.ToArray());
        Assert.Equal(problem.LseLengths, result.LogSumExp.Lengths.ToArray());
        double u = Precision<T>.FloorUnit;
        Tolerance.AssertClose("O", Precision<T>.Flatten(result.Output), ref64.Output, naiveOutput, u, context);
        Tolerance.AssertClose("LSE", Flat.Of(result.LogSumExp), ref64.LogSumExp, naiveLse, u, context);
    }

    /// <summary>
    /// The unfused computation in precision T on the CPU: S = round_T(scale * q.k) with an fp32 dot product (cuBLAS's
    /// alpha applied to its fp32 accumulator), max and sum of exp in fp32, P = round_T(exp(S - max) / sum),
    /// O = round_T(sum_j P_j v_j) in fp32; LSE = max + log(sum) in fp32, +inf where no key is visible.
    /// </summary>
    private static (double[] Output, double[] Lse) UnfusedModel<T>(Problem p, ReferenceSettings settings, Inputs<T> inputs) where T : unmanaged
    {
        var shape = p.Shape;
        float[] q = Precision<T>.ToFloats(inputs.Q), k = Precision<T>.ToFloats(inputs.K), v = Precision<T>.ToFloats(inputs.V);
        var output = new double[p.QCount];
        var lse = new double[p.Batch * p.HeadsQ * p.SeqlenQ];
        var scores = new float[p.SeqlenK];
        var visible = new bool[p.SeqlenK];
        var accumulator = new float[p.HeadDim];
        float scale = (float)settings.Scale;
        static float Round(float x) => Precision<T>.ToFloat(Precision<T>.FromFloat(x));
        for (int b = 0; b < p.Batch; b++)
            for (int h = 0; h < p.HeadsQ; h++)
                for (int i = 0; i < p.SeqlenQ; i++)
                {
                    int hk = h / shape.GroupSize, qBase = ReferenceAttention.QIndex(shape, b, i, h, 0);
                    float max = float.NegativeInfinity;
                    for (int j = 0; j < p.SeqlenK; j++)
                    {
                        int kBase = ReferenceAttention.KvIndex(shape, b, j, hk, 0);
                        float dot = 0;
                        for (int c = 0; c < p.HeadDim; c++) dot += q[qBase + c] * k[kBase + c];
                        scores[j] = Round(scale * dot);
                        visible[j] = settings.IsVisible(i, j, p.SeqlenQ, p.SeqlenK);
                        if (visible[j]) max = MathF.Max(max, scores[j]);
                    }
                    float sum = 0;
                    for (int j = 0; j < p.SeqlenK; j++)
                        if (visible[j]) sum += MathF.Exp(scores[j] - max);
                    lse[(b * p.HeadsQ + h) * p.SeqlenQ + i] = sum == 0 ? double.PositiveInfinity : max + MathF.Log(sum);
                    Array.Clear(accumulator);
                    for (int j = 0; j < p.SeqlenK; j++)
                    {
                        if (!visible[j]) continue;
                        float probability = Round(MathF.Exp(scores[j] - max) / sum);
                        int vBase = ReferenceAttention.KvIndex(shape, b, j, hk, 0);
                        for (int c = 0; c < p.HeadDim; c++) accumulator[c] += probability * v[vBase + c];
                    }
                    for (int c = 0; c < p.HeadDim; c++) output[qBase + c] = Round(accumulator[c]);
                }
        return (output, lse);
    }

    private static AttentionResult<T> OnGpu<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged
    {
        using var q = CudaTensor<T>.FromHost(inputs.QTensor);
        using var k = CudaTensor<T>.FromHost(inputs.KTensor);
        using var v = CudaTensor<T>.FromHost(inputs.VTensor);
        return RunChecked(q, k, v, inputs.Problem, options);
    }

    /// <summary>Packs q, k, v into one (batch, seqlen, 3, heads, headdim) device tensor and runs on strided views of it.</summary>
    private static AttentionResult<T> OnGpuPacked<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged
    {
        var p = inputs.Problem;
        var packed = Tensor.CreateFromShape<T>([p.Batch, p.SeqlenQ, 3, p.HeadsQ, p.HeadDim], pinned: false);
        var sources = new[] { inputs.QTensor, inputs.KTensor, inputs.VTensor };
        for (int which = 0; which < 3; which++)
            for (int b = 0; b < p.Batch; b++)
                for (int s = 0; s < p.SeqlenQ; s++)
                    for (int h = 0; h < p.HeadsQ; h++)
                        for (int c = 0; c < p.HeadDim; c++)
                            packed[b, s, which, h, c] = sources[which][b, s, h, c];
        using var device = CudaTensor<T>.FromHost(packed);
        var strides = device.Strides.ToArray();
        nint[] viewStrides = [strides[0], strides[1], strides[3], strides[4]];
        nint slice = strides[2] * CudaTensor<T>.ElementSize;
        using var q = CudaTensor<T>.View(device.DevicePointer, p.QLengths, viewStrides);
        using var k = CudaTensor<T>.View(device.DevicePointer + slice, p.KvLengths, viewStrides);
        using var v = CudaTensor<T>.View(device.DevicePointer + 2 * slice, p.KvLengths, viewStrides);
        return RunChecked(q, k, v, p, options);
    }

    /// <summary><see cref="Run{T}"/>, asserting that the workspace is the score matrix.</summary>
    private static AttentionResult<T> RunChecked<T>(CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, Problem p, AttentionOptions options)
        where T : unmanaged
    {
        var (result, workspace) = Run(q, k, v, p, options);
        Assert.Equal((long)p.Batch * p.HeadsQ * p.SeqlenQ * p.SeqlenK * 2, workspace);
        return result;
    }

    /// <summary>The baseline needs cuBLAS, which the library itself does not (only the driver and NVRTC): skip without it.</summary>
    private static void RequireCublas(CudaDevice device)
    {
        try
        {
            CublasHandleCache.For(device, CudaStream.Legacy);
        }
        catch (CudaUnavailableException e)
        {
            Assert.Skip("No cuBLAS for the unfused baseline: " + e.Message);
        }
    }

    /// <summary>Poisons caller-owned outputs, runs the baseline on the legacy stream and downloads.</summary>
    private static (AttentionResult<T> Result, long Workspace) Run<T>(CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, Problem p,
        AttentionOptions options) where T : unmanaged
    {
        RequireCublas(q.Device);
        using var output = CudaTensor<T>.Allocate(p.QLengths, q.Device);
        using var lse = CudaTensor<float>.Allocate(p.LseLengths, q.Device);
        output.Fill(0xFF);
        lse.Fill(0xFF);
        var shape = ProblemShape.Fixed(p.Batch, p.SeqlenQ, p.SeqlenK, p.HeadsQ, p.HeadsKv, p.HeadDim);
        var lseStrides = lse.Strides;
        long workspace = UnfusedAttention.Forward<T>(q.Device, shape, AttentionSettings.Resolve(options, shape, null), DeviceOperand.Of(q),
            DeviceOperand.Of(k), DeviceOperand.Of(v), DeviceOperand.Of(output), new DeviceOperand(lse.DevicePointer, lseStrides[0], 1, lseStrides[1]),
            CudaStream.Legacy);
        return (new AttentionResult<T>(output.ToHost(), lse.ToHost(), null, null), workspace);
    }
}
