using FlashAttn.Cuda;

namespace FlashAttn.Cli.Gpu;

/// <summary>Device tensors for one <see cref="FeatureCase"/>, allocated once outside the timed launches, and the launch to time:
/// fixed-length forward(+backward), the varlen API with device offsets, or packed QKV read through strided views.</summary>
internal sealed class FeatureWorkload<T> : IDisposable where T : unmanaged
{
    private readonly List<IDisposable> _owned = [];
    private readonly FeatureCase _case;
    private readonly CudaTensor<T> _q, _k, _v, _output, _dOut, _dq, _dk, _dv;
    private readonly CudaTensor<float> _lse;
    private readonly CudaTensor<int>? _cuSeqlens;

    public FeatureWorkload(FeatureCase c, CudaDevice device, Random random)
    {
        _case = c;
        int h = c.Heads, hk = c.HeadsKv, d = c.HeadDim;
        nint[] QShape(int heads) => c.Lengths is null ? [c.Batch, c.Seqlen, heads, d] : [c.TotalTokens, heads, d];
        if (c.Feature == "packed-qkv")
        {
            // One (b, s, 3, h, d) allocation; q, k, v are views into it (flash-attn's qkvpacked layout, no copies).
            var packed = Own(Random(device, random, [c.Batch, c.Seqlen, 3, h, d]));
            nint[] strides = packed.Strides.ToArray();
            nint[] viewStrides = [strides[0], strides[1], strides[3], strides[4]];
            CudaTensor<T> View(int which) => Own(CudaTensor<T>.View(packed.DevicePointer + which * strides[2] * CudaTensor<T>.ElementSize, QShape(h), viewStrides));
            (_q, _k, _v) = (View(0), View(1), View(2));
        }
        else
        {
            _q = Own(Random(device, random, QShape(h)));
            _k = Own(Random(device, random, QShape(hk)));
            _v = Own(Random(device, random, QShape(hk)));
        }
        _output = Own(CudaTensor<T>.Allocate(QShape(h), device));
        _lse = Own(CudaTensor<float>.Allocate(c.Lengths is null ? [c.Batch, h, c.Seqlen] : [h, c.TotalTokens], device));
        _dOut = Own(Random(device, random, QShape(h)));
        _dq = Own(CudaTensor<T>.Allocate(QShape(h), device));
        _dk = Own(CudaTensor<T>.Allocate(QShape(hk), device));
        _dv = Own(CudaTensor<T>.Allocate(QShape(hk), device));
        if (c.Lengths is { } lengths)
        {
            var offsets = new int[lengths.Length + 1];
            for (int i = 0; i < lengths.Length; i++) offsets[i + 1] = offsets[i] + lengths[i];
            _cuSeqlens = Own(CudaTensor<int>.FromHost(System.Numerics.Tensors.Tensor.Create(offsets, [offsets.Length]), device));
        }
    }

    /// <summary>The timed launch in the case's mode.</summary>
    public Action Launch(CudaStream stream, AttentionOptions options)
    {
        DropoutState? state = options.DropoutState;
        Action forward, backward;
        if (_cuSeqlens is { } cu)
        {
            int max = _case.Seqlen;
            forward = () => FlashAttention.ForwardVarlenInto(_q, _k, _v, cu, cu, max, max, _output, _lse, options, stream);
            backward = () => FlashAttention.BackwardVarlenInto(_dOut, _q, _k, _v, _output, _lse, cu, cu, max, max, _dq, _dk, _dv,
                options, state, stream);
        }
        else
        {
            forward = () => FlashAttention.ForwardInto(_q, _k, _v, _output, _lse, options, stream);
            backward = () => FlashAttention.BackwardInto(_dOut, _q, _k, _v, _output, _lse, _dq, _dk, _dv, options, state, stream);
        }
        if (_case.Mode == "fwd") return forward;
        return () => { forward(); backward(); };
    }

    private TTensor Own<TTensor>(TTensor tensor) where TTensor : IDisposable
    {
        _owned.Add(tensor);
        return tensor;
    }

    private static CudaTensor<T> Random(CudaDevice device, Random random, nint[] lengths) => GpuWorkloads<T>.UploadUniform(device, random, lengths);

    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
    }
}
