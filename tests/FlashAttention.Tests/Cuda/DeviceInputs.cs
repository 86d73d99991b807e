using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>Puts a test problem's q, k, v on the GPU: as three tensors, or as strided views of one packed tensor.</summary>
internal static class DeviceInputs
{
    public static TResult Uploaded<T, TResult>(Inputs<T> inputs, Func<CudaTensor<T>, CudaTensor<T>, CudaTensor<T>, TResult> run) where T : unmanaged
    {
        using var q = CudaTensor<T>.FromHost(inputs.QTensor);
        using var k = CudaTensor<T>.FromHost(inputs.KTensor);
        using var v = CudaTensor<T>.FromHost(inputs.VTensor);
        return run(q, k, v);
    }

    /// <summary>Packs q, k, v into one (batch, seqlen, 3, heads, headdim) device tensor and runs on strided views of it
    /// (the problem must have seqlen_q = seqlen_k and heads_q = heads_kv).</summary>
    public static TResult PackedViews<T, TResult>(Inputs<T> inputs, Func<CudaTensor<T>, CudaTensor<T>, CudaTensor<T>, TResult> run) where T : unmanaged
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
        return run(q, k, v);
    }
}
