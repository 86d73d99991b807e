using FlashAttn.Cuda;
using TorchSharp;

namespace FlashAttn.TorchSharp;

/// <summary>
/// Runs the core's varlen forward and backward over torch tensors. CPU tensors go through
/// <see cref="FlashAttention.ForwardVarlen{T}(System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, System.Numerics.Tensors.ReadOnlyTensorSpan{T}, ReadOnlySpan{int}, ReadOnlySpan{int}, int, int, AttentionOptions?, CancellationToken)"/>
/// and its packed and backward siblings, reading the inputs in place and the offsets from the host copy the call made;
/// results are copied into new torch tensors. CUDA tensors are wrapped as <see cref="CudaTensor{T}"/> views (packed
/// inputs as strided views of one allocation), the offsets as device views of the int32 tensors (never read back), and
/// launched on the legacy default stream, libtorch's stream.
/// </summary>
internal static class VarlenKernels
{
    /// <summary>Forward: O (shaped like q) and the fp32 LSE (heads_q, total_q), new torch tensors on q's device.</summary>
    public static (torch.Tensor Output, torch.Tensor LogSumExp) Forward(VarlenCall call, IReadOnlyList<torch.Tensor> inputs, torch.Tensor cuSeqlensQ,
        torch.Tensor cuSeqlensK) => call.Element switch
    {
        Element.Float32 => Forward<float>(call, inputs, cuSeqlensQ, cuSeqlensK),
        Element.Float16 => Forward<Half>(call, inputs, cuSeqlensQ, cuSeqlensK),
        _ => Forward<BFloat16>(call, inputs, cuSeqlensQ, cuSeqlensK),
    };

    /// <summary>Backward: one gradient per tensor input, shaped (and packed) like it, new contiguous torch tensors.</summary>
    public static torch.Tensor[] Backward(VarlenCall call, torch.Tensor gradOutput, IReadOnlyList<torch.Tensor> inputs, torch.Tensor output,
        torch.Tensor logSumExp, torch.Tensor cuSeqlensQ, torch.Tensor cuSeqlensK)
    {
        // out.sum().backward() feeds an expanded (stride 0) gradient: the kernels need a contiguous head dimension.
        var dOut = TorchTensors.MaybeContiguous(gradOutput);
        try
        {
            return call.Element switch
            {
                Element.Float32 => Backward<float>(call, dOut, inputs, output, logSumExp, cuSeqlensQ, cuSeqlensK),
                Element.Float16 => Backward<Half>(call, dOut, inputs, output, logSumExp, cuSeqlensQ, cuSeqlensK),
                _ => Backward<BFloat16>(call, dOut, inputs, output, logSumExp, cuSeqlensQ, cuSeqlensK),
            };
        }
        finally
        {
            if (!ReferenceEquals(dOut, gradOutput))
                dOut.Dispose();
        }
    }

    private static (torch.Tensor Output, torch.Tensor LogSumExp) Forward<T>(VarlenCall call, IReadOnlyList<torch.Tensor> inputs,
        torch.Tensor cuSeqlensQ, torch.Tensor cuSeqlensK) where T : unmanaged
    {
        var options = call.Options;
        if (!call.OnCuda)
        {
            int[] cuQ = call.HostCuSeqlensQ!, cuK = call.HostCuSeqlensK!;
            var result = call.Packing switch
            {
                Packing.QkvPacked => FlashAttention.ForwardVarlenQkvPacked(TorchTensors.ReadSpan<T>(inputs[0]), cuQ, call.MaxSeqlenQ, options),
                Packing.KvPacked => FlashAttention.ForwardVarlenKvPacked(TorchTensors.ReadSpan<T>(inputs[0]), TorchTensors.ReadSpan<T>(inputs[1]),
                    cuQ, cuK, call.MaxSeqlenQ, call.MaxSeqlenK, options),
                _ => FlashAttention.ForwardVarlen(TorchTensors.ReadSpan<T>(inputs[0]), TorchTensors.ReadSpan<T>(inputs[1]),
                    TorchTensors.ReadSpan<T>(inputs[2]), cuQ, cuK, call.MaxSeqlenQ, call.MaxSeqlenK, options),
            };
            var hostOutput = TorchTensors.ToTorch(result.Output, call.ScalarType);
            try
            {
                return (hostOutput, TorchTensors.ToTorch(result.LogSumExp, torch.ScalarType.Float32));
            }
            catch
            {
                hostOutput.Dispose();
                throw;
            }
        }

        // CUDA: the kernels write straight into torch-allocated O and LSE (ForwardVarlenInto), on the legacy stream libtorch uses.
        var views = new List<torch.Tensor>();
        torch.Tensor? output = null, logSumExp = null;
        try
        {
            var (q, k, v) = AttentionKernels.Split(call.Packing, inputs, views, packedAxis: 1);
            output = torch.empty(q.shape, q.dtype, q.device);
            logSumExp = torch.empty([q.shape[1], q.shape[0]], torch.ScalarType.Float32, q.device);
            using var qView = TorchTensors.CudaView<T>(q);
            using var kView = TorchTensors.CudaView<T>(k);
            using var vView = TorchTensors.CudaView<T>(v);
            using var cuQView = TorchTensors.CudaView<int>(cuSeqlensQ);
            using var cuKView = TorchTensors.CudaView<int>(cuSeqlensK);
            using var outputView = TorchTensors.CudaView<T>(output);
            using var lseView = TorchTensors.CudaView<float>(logSumExp);
            FlashAttention.ForwardVarlenInto(qView, kView, vView, cuQView, cuKView, call.MaxSeqlenQ, call.MaxSeqlenK, outputView, lseView, options,
                CudaStream.Legacy);
            return (output, logSumExp);
        }
        catch
        {
            output?.Dispose();
            logSumExp?.Dispose();
            throw;
        }
        finally
        {
            views.ForEach(view => view.Dispose());
        }
    }

    private static torch.Tensor[] Backward<T>(VarlenCall call, torch.Tensor dOut, IReadOnlyList<torch.Tensor> inputs, torch.Tensor output,
        torch.Tensor logSumExp, torch.Tensor cuSeqlensQ, torch.Tensor cuSeqlensK) where T : unmanaged
    {
        var options = call.Options;
        var dropoutState = options.DropoutState;
        if (!call.OnCuda)
        {
            int[] cuQ = call.HostCuSeqlensQ!, cuK = call.HostCuSeqlensK!;
            var dOutSpan = TorchTensors.ReadSpan<T>(dOut);
            var outputSpan = TorchTensors.ReadSpan<T>(output);
            var lseSpan = TorchTensors.ReadSpan<float>(logSumExp);
            var dtype = call.ScalarType;
            switch (call.Packing)
            {
                case Packing.QkvPacked:
                {
                    var g = FlashAttention.BackwardVarlenQkvPacked(dOutSpan, TorchTensors.ReadSpan<T>(inputs[0]), outputSpan, lseSpan, cuQ,
                        call.MaxSeqlenQ, options, dropoutState);
                    return [TorchTensors.ToTorch(g.DQkv, dtype)];
                }
                case Packing.KvPacked:
                {
                    var g = FlashAttention.BackwardVarlenKvPacked(dOutSpan, TorchTensors.ReadSpan<T>(inputs[0]), TorchTensors.ReadSpan<T>(inputs[1]),
                        outputSpan, lseSpan, cuQ, cuK, call.MaxSeqlenQ, call.MaxSeqlenK, options, dropoutState);
                    return AttentionKernels.Owned(() => TorchTensors.ToTorch(g.DQ, dtype), () => TorchTensors.ToTorch(g.DKv, dtype));
                }
                default:
                {
                    var g = FlashAttention.BackwardVarlen(dOutSpan, TorchTensors.ReadSpan<T>(inputs[0]), TorchTensors.ReadSpan<T>(inputs[1]),
                        TorchTensors.ReadSpan<T>(inputs[2]), outputSpan, lseSpan, cuQ, cuK, call.MaxSeqlenQ, call.MaxSeqlenK, options, dropoutState);
                    return AttentionKernels.Owned(() => TorchTensors.ToTorch(g.DQ, dtype), () => TorchTensors.ToTorch(g.DK, dtype), () => TorchTensors.ToTorch(g.DV, dtype));
                }
            }
        }

        // CUDA: gradients allocated by torch in the inputs' (packed) shapes, written through strided views of them.
        var gradients = AttentionKernels.Owned(inputs.Select(input => (Func<torch.Tensor>)(() => torch.empty(input.shape, input.dtype, input.device))).ToArray());
        var views = new List<torch.Tensor>();
        try
        {
            var (q, k, v) = AttentionKernels.Split(call.Packing, inputs, views, packedAxis: 1);
            var (dq, dk, dv) = AttentionKernels.Split(call.Packing, gradients, views, packedAxis: 1);
            using var dOutView = TorchTensors.CudaView<T>(dOut);
            using var qView = TorchTensors.CudaView<T>(q);
            using var kView = TorchTensors.CudaView<T>(k);
            using var vView = TorchTensors.CudaView<T>(v);
            using var outputView = TorchTensors.CudaView<T>(output);
            using var lseView = TorchTensors.CudaView<float>(logSumExp);
            using var cuQView = TorchTensors.CudaView<int>(cuSeqlensQ);
            using var cuKView = TorchTensors.CudaView<int>(cuSeqlensK);
            using var dqView = TorchTensors.CudaView<T>(dq);
            using var dkView = TorchTensors.CudaView<T>(dk);
            using var dvView = TorchTensors.CudaView<T>(dv);
            FlashAttention.BackwardVarlenInto(dOutView, qView, kView, vView, outputView, lseView, cuQView, cuKView, call.MaxSeqlenQ, call.MaxSeqlenK,
                dqView, dkView, dvView, options, dropoutState, CudaStream.Legacy);
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
}
