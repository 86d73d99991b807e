using FlashAttn.Cuda;
using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// Runs our forward and backward over torch tensors. CUDA tensors are wrapped as <see cref="CudaTensor{T}"/> views (no
/// copies; outputs and gradients are allocated by torch, so their memory belongs to its caching allocator) and launched on
/// the legacy default stream, the stream libtorch works on unless told otherwise. CPU tensors are read in place through
/// System.Numerics.Tensors spans over their memory; the forward writes straight into torch's output tensors, the backward's
/// gradients are copied into new torch tensors.
/// </summary>
internal static class AttentionKernels
{
    /// <summary>The number of tensor inputs of a packing (qkv: 1, q + kv: 2, q, k, v: 3).</summary>
    public static int InputCount(Packing packing) => packing switch
    {
        Packing.QkvPacked => 1,
        Packing.KvPacked => 2,
        _ => 3,
    };

    /// <summary>Forward: allocates O (shaped like q) and the fp32 LSE (batch, heads_q, seqlen_q) with torch and fills them.</summary>
    public static (torch.Tensor Output, torch.Tensor LogSumExp) Forward(AttentionCall call, IReadOnlyList<torch.Tensor> inputs)
    {
        var views = new List<torch.Tensor>();
        try
        {
            var (q, k, v) = Split(call.Packing, inputs, views);
            long[] shape = q.shape;
            var output = torch.empty(shape, q.dtype, q.device);
            var logSumExp = torch.empty([shape[0], shape[2], shape[1]], torch.ScalarType.Float32, q.device);
            try
            {
                switch (call.Element)
                {
                    case Element.Float32: Forward<float>(call, q, k, v, output, logSumExp); break;
                    case Element.Float16: Forward<Half>(call, q, k, v, output, logSumExp); break;
                    default: Forward<BFloat16>(call, q, k, v, output, logSumExp); break;
                }
            }
            catch
            {
                output.Dispose();
                logSumExp.Dispose();
                throw;
            }
            return (output, logSumExp);
        }
        finally
        {
            views.ForEach(view => view.Dispose());
        }
    }

    /// <summary>Backward: one gradient per tensor input, shaped (and packed) like it, new contiguous torch tensors.</summary>
    public static torch.Tensor[] Backward(AttentionCall call, torch.Tensor gradOutput, IReadOnlyList<torch.Tensor> inputs, torch.Tensor output,
        torch.Tensor logSumExp)
    {
        // out.sum().backward() feeds an expanded (stride 0) gradient: the kernels need a contiguous head dimension.
        var dOut = TorchTensors.MaybeContiguous(gradOutput);
        try
        {
            return call.Element switch
            {
                Element.Float32 => Backward<float>(call, dOut, inputs, output, logSumExp),
                Element.Float16 => Backward<Half>(call, dOut, inputs, output, logSumExp),
                _ => Backward<BFloat16>(call, dOut, inputs, output, logSumExp),
            };
        }
        finally
        {
            if (!ReferenceEquals(dOut, gradOutput))
                dOut.Dispose();
        }
    }

    private static void Forward<T>(AttentionCall call, torch.Tensor q, torch.Tensor k, torch.Tensor v, torch.Tensor output, torch.Tensor logSumExp)
        where T : unmanaged
    {
        if (!call.OnCuda)
        {
            FlashAttention.ForwardInto(TorchTensors.ReadSpan<T>(q), TorchTensors.ReadSpan<T>(k), TorchTensors.ReadSpan<T>(v),
                TorchTensors.WriteSpan<T>(output), TorchTensors.WriteSpan<float>(logSumExp), call.Options);
            return;
        }
        using var qView = TorchTensors.CudaView<T>(q);
        using var kView = TorchTensors.CudaView<T>(k);
        using var vView = TorchTensors.CudaView<T>(v);
        using var outputView = TorchTensors.CudaView<T>(output);
        using var lseView = TorchTensors.CudaView<float>(logSumExp);
        FlashAttention.ForwardInto(qView, kView, vView, outputView, lseView, call.Options, CudaStream.Legacy);
    }

    private static torch.Tensor[] Backward<T>(AttentionCall call, torch.Tensor dOut, IReadOnlyList<torch.Tensor> inputs, torch.Tensor output,
        torch.Tensor logSumExp) where T : unmanaged
    {
        var options = call.Options;
        var dropoutState = options.DropoutState;
        if (!call.OnCuda)
        {
            var dOutSpan = TorchTensors.ReadSpan<T>(dOut);
            var outputSpan = TorchTensors.ReadSpan<T>(output);
            var lseSpan = TorchTensors.ReadSpan<float>(logSumExp);
            var dtype = call.ScalarType;
            switch (call.Packing)
            {
                case Packing.QkvPacked:
                {
                    var g = FlashAttention.BackwardQkvPacked(dOutSpan, TorchTensors.ReadSpan<T>(inputs[0]), outputSpan, lseSpan, options, dropoutState);
                    return [TorchTensors.ToTorch(g.DQkv, dtype)];
                }
                case Packing.KvPacked:
                {
                    var g = FlashAttention.BackwardKvPacked(dOutSpan, TorchTensors.ReadSpan<T>(inputs[0]), TorchTensors.ReadSpan<T>(inputs[1]),
                        outputSpan, lseSpan, options, dropoutState);
                    return Owned(() => TorchTensors.ToTorch(g.DQ, dtype), () => TorchTensors.ToTorch(g.DKv, dtype));
                }
                default:
                {
                    var g = FlashAttention.Backward(dOutSpan, TorchTensors.ReadSpan<T>(inputs[0]), TorchTensors.ReadSpan<T>(inputs[1]),
                        TorchTensors.ReadSpan<T>(inputs[2]), outputSpan, lseSpan, options, dropoutState);
                    return Owned(() => TorchTensors.ToTorch(g.DQ, dtype), () => TorchTensors.ToTorch(g.DK, dtype), () => TorchTensors.ToTorch(g.DV, dtype));
                }
            }
        }

        // CUDA: gradients allocated by torch in the inputs' (packed) shapes, written through strided views of them.
        var gradients = Owned(inputs.Select(input => (Func<torch.Tensor>)(() => torch.empty(input.shape, input.dtype, input.device))).ToArray());
        var views = new List<torch.Tensor>();
        try
        {
            var (q, k, v) = Split(call.Packing, inputs, views);
            var (dq, dk, dv) = Split(call.Packing, gradients, views);
            using var dOutView = TorchTensors.CudaView<T>(dOut);
            using var qView = TorchTensors.CudaView<T>(q);
            using var kView = TorchTensors.CudaView<T>(k);
            using var vView = TorchTensors.CudaView<T>(v);
            using var outputView = TorchTensors.CudaView<T>(output);
            using var lseView = TorchTensors.CudaView<float>(logSumExp);
            using var dqView = TorchTensors.CudaView<T>(dq);
            using var dkView = TorchTensors.CudaView<T>(dk);
            using var dvView = TorchTensors.CudaView<T>(dv);
            FlashAttention.BackwardInto(dOutView, qView, kView, vView, outputView, lseView, dqView, dkView, dvView, options, dropoutState,
                CudaStream.Legacy);
            return gradients;
        }
        catch
        {
            foreach (var gradient in gradients)
                gradient.Dispose();
            throw;
        }
        finally
        {
            views.ForEach(view => view.Dispose());
        }
    }

    /// <summary>q, k and v of a packing: the inputs themselves, or strided views into the packed tensors (added to <paramref name="views"/>);
    /// the packed axis is 2 for (batch, seqlen, 3 or 2, heads, d) and 1 for varlen's (total, 3 or 2, heads, d).</summary>
    internal static (torch.Tensor Q, torch.Tensor K, torch.Tensor V) Split(Packing packing, IReadOnlyList<torch.Tensor> inputs, List<torch.Tensor> views,
        int packedAxis = 2)
    {
        torch.Tensor View(torch.Tensor packed, int index)
        {
            var view = packed.select(packedAxis, index);
            views.Add(view);
            return view;
        }

        return packing switch
        {
            Packing.QkvPacked => (View(inputs[0], 0), View(inputs[0], 1), View(inputs[0], 2)),
            Packing.KvPacked => (inputs[0], View(inputs[1], 0), View(inputs[1], 1)),
            _ => (inputs[0], inputs[1], inputs[2]),
        };
    }

    /// <summary>Creates tensors one after another, disposing the ones already made when a later one fails.</summary>
    internal static torch.Tensor[] Owned(params Func<torch.Tensor>[] factories)
    {
        var made = new torch.Tensor[factories.Length];
        try
        {
            for (int i = 0; i < factories.Length; i++)
                made[i] = factories[i]();
            return made;
        }
        catch
        {
            foreach (var tensor in made)
                tensor?.Dispose();
            throw;
        }
    }
}
