using System.Runtime.InteropServices;
using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// One caller's GPU work for the concurrency tests, on one stream: forward, deterministic backward (so repeated results are
/// bit-identical) and a KV-cache decode step that appends one token, each on inputs of its own. <see cref="Start"/> uploads
/// the inputs (waiting only for its stream) and queues the three calls without waiting; <see cref="Run.Finish"/> reads
/// every result back on that stream.
/// </summary>
internal abstract class StreamWorkload
{
    public static readonly string[] ResultNames = ["O", "LSE", "dQ", "dK", "dV", "decode O", "decode LSE", "k cache", "v cache"];

    /// <summary>Workload <paramref name="index"/>: fp16 or bf16, head dim 128 or 64, its own sequence lengths and inputs.</summary>
    public static StreamWorkload For(int index) => index % 2 == 0 ? new Workload<Half>(index) : new Workload<BFloat16>(index);

    public abstract string Name { get; }

    public abstract Run Start(CudaStream stream);

    /// <summary>The device tensors of one started workload; disposing frees them.</summary>
    public sealed class Run(CudaStream stream) : IDisposable
    {
        private readonly List<IDisposable> _owned = [];
        private readonly List<Func<byte[]>> _readers = [];

        public CudaTensor<TE> Upload<TE>(Tensor<TE> host) where TE : unmanaged
        {
            var tensor = Keep(CudaTensor<TE>.Allocate(host.Lengths));
            tensor.CopyFromHost(host, stream);   // waits for this stream only
            return tensor;
        }

        public TD Keep<TD>(TD disposable) where TD : IDisposable
        {
            _owned.Add(disposable);
            return disposable;
        }

        public void Result<TE>(CudaTensor<TE> tensor) where TE : unmanaged => _readers.Add(() => Bytes(tensor, stream));

        /// <summary>Every result's bytes, in <see cref="ResultNames"/> order.</summary>
        public byte[][] Finish() => [.. _readers.Select(read => read())];

        public void Dispose()
        {
            foreach (var owned in _owned) owned.Dispose();
            _owned.Clear();
        }

        private static byte[] Bytes<TE>(CudaTensor<TE> tensor, CudaStream stream) where TE : unmanaged
        {
            var host = tensor.ToHost(stream);
            var values = new TE[host.FlattenedLength];
            host.FlattenTo(values);
            return MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
        }
    }

    private sealed class Workload<T> : StreamWorkload where T : unmanaged
    {
        private static readonly AttentionOptions Options = new() { Causal = true, Deterministic = true };
        private static readonly AttentionOptions DecodeOptions = new() { Causal = true };
        private readonly Inputs<T> _attention, _decode, _append;
        private readonly int[] _cacheSeqlens;

        public Workload(int index)
        {
            var random = new TestRandom();
            int dim = index % 4 < 2 ? 128 : 64;
            _attention = Inputs<T>.Create(new Problem(1 + index % 2, 200 + 101 * index, 180 + 97 * index, 8, 2, dim), random);
            _decode = Inputs<T>.Create(new Problem(3, 1, 512, 8, 2, dim), random);   // q, and the caches as k and v
            _append = Inputs<T>.Create(new Problem(3, 1, 1, 8, 2, dim), random);     // k_new and v_new as k and v
            _cacheSeqlens = [37 + index, 256, 510];
            Name = $"workload {index} ({Precision<T>.Name}, attention {_attention.Problem}, decode d={dim}, {random})";
        }

        public override string Name { get; }

        public override Run Start(CudaStream stream)
        {
            var run = new Run(stream);
            try
            {
                var q = run.Upload(_attention.QTensor);
                var k = run.Upload(_attention.KTensor);
                var v = run.Upload(_attention.VTensor);
                var dOut = run.Upload(_attention.DOutTensor);
                var decodeQ = run.Upload(_decode.QTensor);
                var kCache = run.Upload(_decode.KTensor);   // fresh copies each run: the append writes into them
                var vCache = run.Upload(_decode.VTensor);
                var kNew = run.Upload(_append.KTensor);
                var vNew = run.Upload(_append.VTensor);
                var seqlens = run.Upload(Tensor.Create(_cacheSeqlens, [_cacheSeqlens.Length]));

                var forward = run.Keep(FlashAttention.Forward(q, k, v, Options, stream));
                var grads = run.Keep(FlashAttention.Backward(dOut, q, k, v, forward.Output, forward.LogSumExp, Options, stream: stream));
                var decode = run.Keep(FlashAttention.ForwardWithKvCache(decodeQ, kCache, vCache, kNew, vNew, seqlens, options: DecodeOptions,
                    stream: stream));
                run.Result(forward.Output);
                run.Result(forward.LogSumExp);
                run.Result(grads.DQ);
                run.Result(grads.DK);
                run.Result(grads.DV);
                run.Result(decode.Output);
                run.Result(decode.LogSumExp);
                run.Result(kCache);
                run.Result(vCache);
                return run;
            }
            catch
            {
                run.Dispose();
                throw;
            }
        }
    }
}
