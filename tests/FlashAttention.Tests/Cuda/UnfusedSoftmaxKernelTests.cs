using System.Numerics.Tensors;
using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;
using FlashAttn.Validation;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The unfused baseline's row kernels on their own (Kernels/unfused_softmax.cu, unfused_softmax_bwd.cu), fed from the host
/// instead of a cuBLAS GEMM: softmax rows in place with the LSE, and dS = P (dP - rowsum(P dP)), against a float64
/// computation on the same rounded inputs, for the warp-per-row (rows up to 1024 keys) and block-per-row kernels. Without
/// cuBLAS in the process, compute-sanitizer checks these kernels alone (scripts/sanitize.sh, workload "unfused-rows").
/// </summary>
[Trait("Category", "Cuda")]
public sealed class UnfusedSoftmaxKernelTests
{
    private const int Batch = 2, Heads = 3, SeqlenQ = 37;

    [Theory]
    [InlineData(Dtype.Fp16, 100, false)]    // warp per row
    [InlineData(Dtype.Bf16, 100, true)]
    [InlineData(Dtype.Fp16, 1500, true)]    // block per row
    [InlineData(Dtype.Bf16, 1500, false)]
    public void SoftmaxRowsMatchFloat64(Dtype dtype, int seqlenK, bool causal)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        if (dtype == Dtype.Fp16) Softmax<Half>(device, seqlenK, causal);
        else Softmax<BFloat16>(device, seqlenK, causal);
    }

    [Theory]
    [InlineData(Dtype.Fp16, 100)]
    [InlineData(Dtype.Bf16, 100)]
    [InlineData(Dtype.Fp16, 1500)]
    [InlineData(Dtype.Bf16, 1500)]
    public void SoftmaxGradientRowsMatchFloat64(Dtype dtype, int seqlenK)
    {
        var device = GpuRequirement.SkipIfUnavailable();
        if (dtype == Dtype.Fp16) SoftmaxGradient<Half>(device, seqlenK);
        else SoftmaxGradient<BFloat16>(device, seqlenK);
    }

    private static void Softmax<T>(CudaDevice device, int seqlenK, bool causal) where T : unmanaged
    {
        var random = new TestRandom();
        var shape = ProblemShape.Fixed(Batch, SeqlenQ, seqlenK, Heads, Heads, 64);
        var settings = AttentionSettings.Resolve(new AttentionOptions { Causal = causal }, shape, null);
        T[] scores = Precision<T>.FromFloats(random.Normal((long)Batch * Heads * SeqlenQ * seqlenK, 2f));
        using var onDevice = CudaTensor<T>.FromHost(Tensor.Create(scores, [Batch, Heads, SeqlenQ, seqlenK]), device);
        using var lse = CudaTensor<float>.Allocate([Batch, Heads, SeqlenQ], device);
        // The LSE operand is a (batch, heads, seqlen_q) view: batch and head strides, row stride 1.
        var lseView = new DeviceOperand(lse.DevicePointer, StrideBatch: Heads * SeqlenQ, StrideRow: 1, StrideHead: SeqlenQ);
        UnfusedAttention.Softmax(device, CudaStream.Legacy, shape, settings, onDevice.DevicePointer, lseView, typeof(T) == typeof(BFloat16));
        T[] p = [.. onDevice.ToHost()];
        float[] l = [.. lse.ToHost()];

        double unit = Precision<T>.FloorUnit;   // half an ulp of the element type at 1
        for (int row = 0; row < Batch * Heads * SeqlenQ; row++)
        {
            int i = row % SeqlenQ, visibleEnd = causal ? Math.Min(seqlenK, i + seqlenK - SeqlenQ + 1) : seqlenK;
            long at = (long)row * seqlenK;
            double max = double.NegativeInfinity, sum = 0;
            for (int j = 0; j < visibleEnd; j++) max = Math.Max(max, Precision<T>.ToFloat(scores[at + j]));
            for (int j = 0; j < visibleEnd; j++) sum += Math.Exp(Precision<T>.ToFloat(scores[at + j]) - max);
            for (int j = 0; j < seqlenK; j++)
            {
                double expected = j < visibleEnd ? Math.Exp(Precision<T>.ToFloat(scores[at + j]) - max) / sum : 0;
                double actual = Precision<T>.ToFloat(p[at + j]);
                Assert.True(Math.Abs(actual - expected) <= 2 * unit * expected + 1e-7,
                    $"P[{row}, {j}] = {actual}, float64 gives {expected} ({typeof(T).Name}, seqlen_k {seqlenK}, causal {causal})");
            }
            double expectedLse = max + Math.Log(sum);
            Assert.True(Math.Abs(l[row] - expectedLse) <= 1e-5 * Math.Max(1, Math.Abs(expectedLse)),
                $"LSE[{row}] = {l[row]}, float64 gives {expectedLse}");
        }
    }

    private static void SoftmaxGradient<T>(CudaDevice device, int seqlenK) where T : unmanaged
    {
        var random = new TestRandom();
        var shape = ProblemShape.Fixed(Batch, SeqlenQ, seqlenK, Heads, Heads, 64);
        long count = (long)Batch * Heads * SeqlenQ * seqlenK;
        // Rows of probabilities (a softmax of random scores, rounded to T) and random dP.
        float[] raw = random.Normal(count, 2f);
        var probabilities = new float[count];
        for (long at = 0; at < count; at += seqlenK)
        {
            var row = raw.AsSpan((int)at, seqlenK);
            double max = TensorPrimitives.Max(row), sum = 0;
            foreach (float x in row) sum += Math.Exp(x - max);
            for (int j = 0; j < seqlenK; j++) probabilities[at + j] = (float)(Math.Exp(row[j] - max) / sum);
        }
        T[] p = Precision<T>.FromFloats(probabilities), dp = Precision<T>.FromFloats(random.Normal(count));
        using var pOnDevice = CudaTensor<T>.FromHost(Tensor.Create(p, [(nint)count]), device);
        using var dsOnDevice = CudaTensor<T>.FromHost(Tensor.Create(dp, [(nint)count]), device);
        UnfusedAttention.SoftmaxBackward(device, CudaStream.Legacy, shape, pOnDevice.DevicePointer, dsOnDevice.DevicePointer, typeof(T) == typeof(BFloat16));
        T[] ds = [.. dsOnDevice.ToHost()];

        double unit = Precision<T>.FloorUnit;
        for (long at = 0; at < count; at += seqlenK)
        {
            double d = 0, magnitude = 0;   // D = rowsum(P dP), and the sum of |P dP| that bounds its fp32 rounding
            for (int j = 0; j < seqlenK; j++)
            {
                double term = (double)Precision<T>.ToFloat(p[at + j]) * Precision<T>.ToFloat(dp[at + j]);
                d += term;
                magnitude += Math.Abs(term);
            }
            for (int j = 0; j < seqlenK; j++)
            {
                double pj = Precision<T>.ToFloat(p[at + j]), dpj = Precision<T>.ToFloat(dp[at + j]);
                double expected = pj * (dpj - d), actual = Precision<T>.ToFloat(ds[at + j]);
                // One rounding of dS to T, plus fp32 arithmetic: dP - D and D's sum (bounded through sum |P dP|).
                Assert.True(Math.Abs(actual - expected) <= 2 * unit * Math.Abs(expected) + 1e-5 * pj * (Math.Abs(dpj) + magnitude) + 1e-7,
                    $"dS[{at / seqlenK}, {j}] = {actual}, float64 gives {expected} ({typeof(T).Name}, seqlen_k {seqlenK})");
            }
        }
    }
}
