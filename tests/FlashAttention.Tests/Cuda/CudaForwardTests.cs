using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The FlashAttention-2 CUDA forward kernel against the float64 reference, with the same tolerance rule as the
/// CPU path. Outputs are poisoned (all bits set: NaN) before every launch, so an element the kernel fails to
/// write fails the comparison.
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaForwardTests
{
    public static TheoryData<int, int, int, int, int, int, bool> Shapes => new()
    {
        { 1, 1, 1, 1, 1, 64, false },       // one query, one key
        { 2, 17, 113, 4, 2, 40, false },    // seqlen_q < seqlen_k, GQA 2:1, head dim padded 40 -> 64
        { 1, 113, 17, 6, 1, 59, true },     // seqlen_q > seqlen_k causal: leading rows see nothing; MQA; odd head dim
        { 2, 1023, 1023, 2, 2, 128, true },
        { 1, 200, 333, 3, 3, 96, false },
        { 1, 129, 257, 2, 1, 111, true },
        { 1, 64, 300, 2, 2, 256, false },
        { 1, 1, 513, 4, 4, 128, true },     // decoding-like: one query over a long cache
        { 2, 130, 130, 2, 2, 192, true },
        { 1, 77, 77, 2, 2, 8, false },
    };

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Fp16MatchesReference(int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal)
    {
        GpuRequirement.SkipIfUnavailable();
        AttentionCheck.Forward<Half>(new Problem(batch, seqlenQ, seqlenK, headsQ, headsKv, headDim), new AttentionOptions { Causal = causal }, run: OnGpu);
    }

    [Theory]
    [MemberData(nameof(Shapes))]
    public void Bf16MatchesReference(int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim, bool causal)
    {
        GpuRequirement.SkipIfUnavailable();
        AttentionCheck.Forward<BFloat16>(new Problem(batch, seqlenQ, seqlenK, headsQ, headsKv, headDim), new AttentionOptions { Causal = causal }, run: OnGpu);
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
        AttentionCheck.Forward<BFloat16>(new Problem(2, 300, 357, 4, 2, 64), options, run: OnGpu);
        AttentionCheck.Forward<Half>(new Problem(1, 357, 300, 2, 2, 128), options, run: OnGpu);
    }

    [Fact]
    public void CustomScaleMatchesReference()
    {
        GpuRequirement.SkipIfUnavailable();
        AttentionCheck.Forward<Half>(new Problem(1, 150, 150, 2, 2, 64), new AttentionOptions { SoftmaxScale = 0.37f, Causal = true }, run: OnGpu);
    }

    [Fact]
    public void PackedQkvViewsAreReadThroughStrides()
    {
        GpuRequirement.SkipIfUnavailable();
        AttentionCheck.Forward<BFloat16>(new Problem(2, 97, 97, 3, 3, 64), new AttentionOptions { Causal = true }, run: OnGpuPacked);
    }

    [Fact]
    public void FloatInputIsRejectedWithTheFix()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<float>.Allocate([1, 8, 1, 64], device);
        var error = Assert.Throws<ArgumentException>(() => FlashAttention.Forward(q, q, q));
        Assert.Equal("q", error.ParamName);
        Assert.Contains("Half", error.Message);
    }

    [Fact]
    public void BadShapesAreRejectedBeforeAnyWork()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([1, 8, 4, 64], device);
        using var k = CudaTensor<Half>.Allocate([1, 8, 3, 64], device);
        using var wide = CudaTensor<Half>.Allocate([1, 8, 1, 264], device);
        Assert.Equal("k", Assert.Throws<ArgumentException>(() => FlashAttention.Forward(q, k, k)).ParamName);
        Assert.Equal("q", Assert.Throws<ArgumentException>(() => FlashAttention.Forward(wide, wide, wide)).ParamName);
    }

    [Fact]
    public void EmptyBatchLaunchesNothing()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var q = CudaTensor<Half>.Allocate([0, 8, 2, 64], device);
        using var result = FlashAttention.Forward(q, q, q);
        Assert.Equal([0, 8, 2, 64], result.Output.Lengths.ToArray());
        Assert.Equal([0, 2, 8], result.LogSumExp.Lengths.ToArray());
    }

    /// <summary>Uploads q, k, v, poisons caller-owned outputs, runs the kernel and downloads.</summary>
    private static AttentionResult<T> OnGpu<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged =>
        DeviceInputs.Uploaded(inputs, (q, k, v) => RunPoisoned(q, k, v, inputs.Problem, options));

    private static AttentionResult<T> OnGpuPacked<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged =>
        DeviceInputs.PackedViews(inputs, (q, k, v) => RunPoisoned(q, k, v, inputs.Problem, options));

    private static AttentionResult<T> RunPoisoned<T>(CudaTensor<T> q, CudaTensor<T> k, CudaTensor<T> v, Problem p, AttentionOptions options)
        where T : unmanaged
    {
        using var output = CudaTensor<T>.Allocate(p.QLengths, q.Device);
        using var lse = CudaTensor<float>.Allocate(p.LseLengths, q.Device);
        output.Fill(0xFF);
        lse.Fill(0xFF);
        FlashAttention.ForwardInto(q, k, v, output, lse, options);
        return new AttentionResult<T>(output.ToHost(), lse.ToHost(), null, null);
    }
}
