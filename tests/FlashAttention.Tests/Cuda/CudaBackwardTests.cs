using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The FlashAttention-2 CUDA backward kernels against the float64 reference gradients, fed with the CUDA forward's
/// own output and LSE (as a training step would). Gradient tensors are poisoned (NaN) before every launch.
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaBackwardTests
{
    public static TheoryData<int, int, int, int, int, int, bool> Shapes => new()
    {
        { 1, 1, 1, 1, 1, 64, false },
        { 2, 17, 113, 4, 2, 40, false },    // seqlen_q < seqlen_k, GQA 2:1, head dim padded 40 -> 64
        { 1, 113, 17, 6, 1, 59, true },     // seqlen_q > seqlen_k causal: rows that see nothing; MQA
        { 2, 257, 257, 2, 2, 128, true },
        { 1, 200, 333, 3, 3, 96, false },
        { 1, 129, 257, 2, 1, 111, true },
        { 1, 64, 300, 4, 2, 128, false },
        { 1, 77, 77, 2, 2, 8, false },
        { 1, 150, 211, 4, 2, 256, true },   // the wide kernel (head dims over 128): 64-key blocks, head dim split over warps
        { 2, 97, 64, 2, 1, 160, false },    // bucket 192, padded; MQA
        { 1, 130, 130, 2, 2, 192, true },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Fp16GradientsMatchReference(int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal)
    {
        GpuRequirement.SkipIfUnavailable();
        AttentionCheck.Backward<Half>(new Problem(batch, seqlenQ, seqlenK, headsQ, headsKv, headDim), new AttentionOptions { Causal = causal },
            run: ForwardOnGpu, runBackward: BackwardOnGpu);
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Bf16GradientsMatchReference(int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal)
    {
        GpuRequirement.SkipIfUnavailable();
        AttentionCheck.Backward<BFloat16>(new Problem(batch, seqlenQ, seqlenK, headsQ, headsKv, headDim), new AttentionOptions { Causal = causal },
            run: ForwardOnGpu, runBackward: BackwardOnGpu);
    }

    [Theory]
    [InlineData(32, 16)]
    [InlineData(-1, 0)]
    [InlineData(100, -1)]
    public void SlidingWindowGradientsMatchReference(int left, int right)
    {
        GpuRequirement.SkipIfUnavailable();
        AttentionCheck.Backward<BFloat16>(new Problem(1, 300, 257, 4, 2, 64), new AttentionOptions { WindowLeft = left, WindowRight = right },
            run: ForwardOnGpu, runBackward: BackwardOnGpu);
    }

    [Fact]
    public void DeterministicModeGivesBitwiseIdenticalGradients()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        var problem = new Problem(2, 300, 300, 4, 2, 128);
        var inputs = Inputs<Half>.Create(problem);
        var options = new AttentionOptions { Causal = true, Deterministic = true };
        AttentionCheck.Backward<Half>(problem, options, inputs, ForwardOnGpu, BackwardOnGpu);
        var first = Flat(BackwardOnGpu(inputs, options, ForwardOnGpu(inputs, options)));
        for (int run = 0; run < 3; run++)
            Assert.Equal(first, Flat(BackwardOnGpu(inputs, options, ForwardOnGpu(inputs, options))));
        Assert.NotNull(device);
    }

    /// <summary>Host threads launching backward concurrently on one stream share its pooled workspace; their launch
    /// sequences must not interleave (a bug this test caught: one call's dQ summed another's accumulators).</summary>
    [Fact]
    public void ConcurrentBackwardCallsOnOneStreamMatchSequentialOnes()
    {
        GpuRequirement.SkipIfUnavailable();
        var options = new AttentionOptions { Causal = true, Deterministic = true };
        var cases = new[] { new Problem(1, 64, 64, 2, 2, 64), new Problem(2, 300, 300, 4, 2, 128), new Problem(1, 1000, 700, 2, 1, 128), new Problem(2, 129, 257, 2, 2, 40) }
            .Select(p => Inputs<Half>.Create(p)).ToArray();
        var forwards = cases.Select(inputs => ForwardOnGpu(inputs, options)).ToArray();
        var sequential = cases.Select((inputs, i) => Flat(BackwardOnGpu(inputs, options, forwards[i]))).ToArray();
        var concurrent = new ushort[cases.Length * 4][];
        Parallel.For(0, concurrent.Length, new ParallelOptions { MaxDegreeOfParallelism = 8 }, i =>
        {
            int which = i % cases.Length;
            concurrent[i] = Flat(BackwardOnGpu(cases[which], options, forwards[which]));
        });
        for (int i = 0; i < concurrent.Length; i++)
            Assert.True(sequential[i % cases.Length].AsSpan().SequenceEqual(concurrent[i]), $"concurrent call {i} ({cases[i % cases.Length].Problem}) differs from the sequential result");
    }

    [Theory]
    [InlineData(192)]
    [InlineData(256)]
    public void WideHeadDimsHandleWindowsDropoutAndDeterminism(int headDim)
    {
        GpuRequirement.SkipIfUnavailable();
        var random = new TestRandom();
        var problem = new Problem(1, 200, 170, 4, 2, headDim);
        AttentionCheck.Backward<BFloat16>(problem, new AttentionOptions { WindowLeft = 40, WindowRight = 7 }, run: ForwardOnGpu, runBackward: BackwardOnGpu);
        AttentionCheck.Backward<Half>(problem, new AttentionOptions { DropoutProbability = 0.2f, DropoutState = random.NextDropoutState(), Causal = true },
            run: ForwardOnGpu, runBackward: BackwardOnGpu);
        var inputs = Inputs<Half>.Create(problem, random);
        var options = new AttentionOptions { Causal = true, Deterministic = true };
        AttentionCheck.Backward<Half>(problem, options, inputs, ForwardOnGpu, BackwardOnGpu);
        var first = Flat(BackwardOnGpu(inputs, options, ForwardOnGpu(inputs, options)));
        Assert.Equal(first, Flat(BackwardOnGpu(inputs, options, ForwardOnGpu(inputs, options))));
    }

    internal static AttentionResult<T> ForwardOnGpu<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged
    {
        using var q = CudaTensor<T>.FromHost(inputs.QTensor);
        using var k = CudaTensor<T>.FromHost(inputs.KTensor);
        using var v = CudaTensor<T>.FromHost(inputs.VTensor);
        using var result = FlashAttention.Forward(q, k, v, options);
        return new AttentionResult<T>(result.Output.ToHost(), result.LogSumExp.ToHost(), result.DropoutState, null);
    }

    /// <summary>Backward into gradients that start as 0xFF bytes (NaN in fp16 and bf16).</summary>
    internal static AttentionGradients<T> BackwardOnGpu<T>(Inputs<T> inputs, AttentionOptions options, AttentionResult<T> forward) where T : unmanaged =>
        BackwardOnGpu(inputs, options, forward, 0xFF);

    /// <summary>Uploads everything backward reads, including that path's forward O and LSE (and its dropout state), into
    /// gradients that start as <paramref name="fill"/> in every byte, runs BackwardInto and downloads them.</summary>
    internal static AttentionGradients<T> BackwardOnGpu<T>(Inputs<T> inputs, AttentionOptions options, AttentionResult<T> forward, byte fill)
        where T : unmanaged
    {
        var p = inputs.Problem;
        using var q = CudaTensor<T>.FromHost(inputs.QTensor);
        using var k = CudaTensor<T>.FromHost(inputs.KTensor);
        using var v = CudaTensor<T>.FromHost(inputs.VTensor);
        using var dOut = CudaTensor<T>.FromHost(inputs.DOutTensor);
        using var output = CudaTensor<T>.FromHost(forward.Output);
        using var lse = CudaTensor<float>.FromHost(forward.LogSumExp);
        using var dq = CudaTensor<T>.Allocate(p.QLengths, q.Device);
        using var dk = CudaTensor<T>.Allocate(p.KvLengths, q.Device);
        using var dv = CudaTensor<T>.Allocate(p.KvLengths, q.Device);
        dq.Fill(fill);
        dk.Fill(fill);
        dv.Fill(fill);
        FlashAttention.BackwardInto(dOut, q, k, v, output, lse, dq, dk, dv, options, forward.DropoutState);
        return new AttentionGradients<T>(dq.ToHost(), dk.ToHost(), dv.ToHost());
    }

    internal static ushort[] Flat<T>(AttentionGradients<T> grads) where T : unmanaged =>
        [.. Bits(grads.DQ), .. Bits(grads.DK), .. Bits(grads.DV)];

    private static ushort[] Bits<T>(Tensor<T> tensor) where T : unmanaged
    {
        var values = new T[tensor.FlattenedLength];
        tensor.FlattenTo(values);
        return System.Runtime.InteropServices.MemoryMarshal.Cast<T, ushort>(values).ToArray();
    }
}
