using FlashAttn.Cuda;
using FlashAttn.Validation;

namespace FlashAttn.Cli.Gpu;

/// <summary>The GPU implementations the bench times on one shape: our FlashAttention-2 kernel and the unfused
/// (materialised) baseline, each on device tensors allocated once, outside the timed launches.</summary>
internal sealed class GpuWorkloads<T> : IDisposable where T : unmanaged
{
    private readonly CudaTensor<T> _q, _k, _v, _output, _dOut, _dq, _dk, _dv;
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
        bool backward = c.Mode != "fwd";
        _dOut = backward ? Upload(c, device, random) : _output;
        _dq = backward ? CudaTensor<T>.Allocate(c.Lengths, device) : _output;
        _dk = backward ? CudaTensor<T>.Allocate(c.Lengths, device) : _output;
        _dv = backward ? CudaTensor<T>.Allocate(c.Lengths, device) : _output;
    }

    /// <summary>Ours in the case's mode: forward into preallocated O and LSE, backward into preallocated dQ, dK, dV
    /// (its workspace comes from the stream's pool), or both.</summary>
    public Action Ours(CudaStream stream)
    {
        var options = new AttentionOptions { Causal = _case.Causal };
        void Forward() => FlashAttention.ForwardInto(_q, _k, _v, _output, _lse, options, stream);
        void Backward() => FlashAttention.BackwardInto(_dOut, _q, _k, _v, _output, _lse, _dq, _dk, _dv, options, stream: stream);
        if (_case.Mode == "fwd") return Forward;
        Forward();
        return _case.Mode == "bwd" ? Backward : () => { Forward(); Backward(); };
    }

    /// <summary>Device memory that forward+backward needs beyond inputs and outputs (O, dQ, dK, dV): the LSE and
    /// backward's pooled workspace, measured from what the pool holds after one run from empty.</summary>
    public double OursWorkspaceMib(CudaStream stream)
    {
        WorkspacePool.Release();
        Ours(stream)();
        stream.Synchronize();
        return (WorkspacePool.HeldBytes + _lse.ByteLength) / (1024.0 * 1024.0);
    }

    /// <summary>The unfused baseline in the case's mode; its workspace (the score matrix, and for backward the kept P plus
    /// dP) is allocated inside each call, as PyTorch's math path allocates it, and reported through <paramref name="workspace"/>.</summary>
    public Action Unfused(CudaDevice device, CudaStream stream, Action<long> workspace)
    {
        var options = new AttentionOptions { Causal = _case.Causal };
        var shape = ProblemShape.Fixed(_case.Batch, _case.Seqlen, _case.Seqlen, _case.Heads, _case.Heads, _case.HeadDim);
        var settings = AttentionSettings.Resolve(options, shape, null);
        var lse = new DeviceOperand(_lse.DevicePointer, _lse.Strides[0], 1, _lse.Strides[1]);
        DeviceOperand q = DeviceOperand.Of(_q), k = DeviceOperand.Of(_k), v = DeviceOperand.Of(_v), o = DeviceOperand.Of(_output);
        if (_case.Mode == "fwd")
            return () => workspace(UnfusedAttention.Forward<T>(device, shape, settings, q, k, v, o, lse, stream));
        return () =>
        {
            using var probabilities = UnfusedAttention.ForwardKeepingProbabilities<T>(device, shape, settings, q, k, v, o, lse, stream);
            long backward = UnfusedAttention.Backward<T>(device, shape, settings, probabilities, DeviceOperand.Of(_dOut), q, k, v,
                DeviceOperand.Of(_dq), DeviceOperand.Of(_dk), DeviceOperand.Of(_dv), stream);
            workspace(probabilities.ByteLength + backward);
        };
    }

    private static CudaTensor<T> Upload(GpuBenchCase c, CudaDevice device, Random random) => UploadUniform(device, random, c.Lengths);

    /// <summary>Uniform random values in [-1, 1), generated in parallel chunks (tens of millions of elements per tensor).</summary>
    public static CudaTensor<T> UploadUniform(CudaDevice device, Random random, nint[] lengths)
    {
        long count = 1;
        foreach (var n in lengths) count *= n;
        var values = new T[count];
        const int chunk = 1 << 20;
        int seed = random.Next();
        Parallel.For(0, (int)((count + chunk - 1) / chunk), index =>
        {
            var local = new Random(seed + index);
            long end = Math.Min(count, (long)(index + 1) * chunk);
            for (long i = (long)index * chunk; i < end; i++) values[i] = FromFloat(local.NextSingle() * 2 - 1);
        });
        return CudaTensor<T>.FromHost(System.Numerics.Tensors.Tensor.Create(values, lengths), device);
    }

    public static T FromFloat(float x)
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
        foreach (var tensor in new[] { _output, _dOut, _dq, _dk, _dv }.Distinct()) tensor.Dispose();
        _lse.Dispose();
    }
}
