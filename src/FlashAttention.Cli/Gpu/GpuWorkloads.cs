using FlashAttn.Cuda;
using FlashAttn.Validation;

namespace FlashAttn.Cli.Gpu;

/// <summary>The GPU implementations the bench times on one shape: our FlashAttention-2 kernel and the unfused
/// (materialised) baseline, each on device tensors allocated once, outside the timed launches.</summary>
internal sealed class GpuWorkloads<T> : IDisposable where T : unmanaged
{
    private readonly CudaTensor<T> _q, _k, _v, _output;
    private readonly CudaTensor<float> _lse;
    private readonly GpuBenchCase _case;

    public GpuWorkloads(GpuBenchCase c, CudaDevice device, Random random)
    {
        _case = c;
        _q = Upload(c, device, random);
        _k = Upload(c, device, random);
        _v = Upload(c, device, random);
        _output = CudaTensor<T>.Allocate(c.Lengths, device);
        _lse = CudaTensor<float>.Allocate([c.Batch, c.Heads, c.Seqlen], device);
    }

    public Action Ours(CudaStream stream)
    {
        var options = new AttentionOptions { Causal = _case.Causal };
        return () => FlashAttention.ForwardInto(_q, _k, _v, _output, _lse, options, stream);
    }

    /// <summary>The unfused baseline; its workspace (the score matrix) is allocated inside each call, as PyTorch's is.</summary>
    public Action Unfused(CudaDevice device, CudaStream stream, Action<long> workspace)
    {
        var options = new AttentionOptions { Causal = _case.Causal };
        var shape = ProblemShape.Fixed(_case.Batch, _case.Seqlen, _case.Seqlen, _case.Heads, _case.Heads, _case.HeadDim);
        var settings = AttentionSettings.Resolve(options, shape, null);
        var lse = new DeviceOperand(_lse.DevicePointer, _lse.Strides[0], 1, _lse.Strides[1]);
        return () => workspace(UnfusedAttention.Forward<T>(device, shape, settings, DeviceOperand.Of(_q), DeviceOperand.Of(_k), DeviceOperand.Of(_v),
            DeviceOperand.Of(_output), lse, stream));
    }

    /// <summary>Uniform random values in [-1, 1), generated in parallel chunks (tens of millions of elements per tensor).</summary>
    private static CudaTensor<T> Upload(GpuBenchCase c, CudaDevice device, Random random)
    {
        long count = (long)c.Batch * c.Seqlen * c.Heads * c.HeadDim;
        var values = new T[count];
        const int chunk = 1 << 20;
        int seed = random.Next();
        Parallel.For(0, (int)((count + chunk - 1) / chunk), index =>
        {
            var local = new Random(seed + index);
            long end = Math.Min(count, (long)(index + 1) * chunk);
            for (long i = (long)index * chunk; i < end; i++) values[i] = FromFloat(local.NextSingle() * 2 - 1);
        });
        return CudaTensor<T>.FromHost(System.Numerics.Tensors.Tensor.Create(values, c.Lengths), device);
    }

    private static T FromFloat(float x)
    {
        if (typeof(T) == typeof(Half))
        {
            Half h = (Half)x;
            return System.Runtime.CompilerServices.Unsafe.As<Half, T>(ref h);
        }
        BFloat16 b = (BFloat16)x;
        return System.Runtime.CompilerServices.Unsafe.As<BFloat16, T>(ref b);
    }

    public void Dispose()
    {
        _q.Dispose();
        _k.Dispose();
        _v.Dispose();
        _output.Dispose();
        _lse.Dispose();
    }
}
