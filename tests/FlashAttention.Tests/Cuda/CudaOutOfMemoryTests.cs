using System.Globalization;
using System.Runtime.InteropServices;
using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// Attention calls on a GPU whose memory is (nearly) full: each must throw <see cref="CudaOutOfMemoryException"/> naming the
/// size it asked for and a fix, leak nothing, and work again, bit for bit as before, once the memory is back.
/// </summary>
/// <remarks>
/// "Nothing leaked" means: with the filler still held and the device synchronised, free device memory after the failed call
/// is at least what it was before it, less <see cref="FreeMemorySlack"/> (the driver's 2 MiB allocation page), and the
/// workspace pool (<see cref="WorkspacePool.HeldBytes"/>) holds no more than before. The pool may keep a buffer between
/// calls, so a reference call sizes it before the fill and the measurement spans the failed call only; a grow that fails
/// has already freed the stream's old buffer, so the pool may hold less afterwards, never more. Every output of these calls
/// is 16 MiB or more, so a leaked one could not hide in the slack. The class runs alone (nothing else allocates meanwhile),
/// and the filler is freed in a using block whatever happens.
/// </remarks>
[Trait("Category", "Cuda")]
[Collection(RunsAloneCollection.Name)]
public sealed class CudaOutOfMemoryTests
{
    private const long FreeMemorySlack = 2L << 20;
    private static readonly AttentionOptions Causal = new() { Causal = true };

    [Fact]
    public void ForwardThrowsAndLeavesNothingBehind()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        var inputs = Inputs<Half>.Create(new Problem(2, 2048, 2048, 16, 16, 128));   // O: 16 MiB
        using var q = CudaTensor<Half>.FromHost(inputs.QTensor);
        using var k = CudaTensor<Half>.FromHost(inputs.KTensor);
        using var v = CudaTensor<Half>.FromHost(inputs.VTensor);
        AssertOutOfMemoryThenSameResult(device, inputs.Random, headroom: 0, expectedRequest: q.ByteLength, call: () =>
        {
            using var result = FlashAttention.Forward(q, k, v, Causal);
            return [.. Bytes(result.Output), .. Bytes(result.LogSumExp)];
        });
    }

    [Fact]
    public void BackwardThrowsWhenTheGradientsDoNotFit()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var problem = BackwardProblem.Create();
        AssertOutOfMemoryThenSameResult(device, problem.Random, headroom: 0, expectedRequest: problem.Q.ByteLength,
            call: () => problem.Backward(CudaStream.Legacy));
    }

    [Fact]
    public void BackwardThrowsWhenItsWorkspaceDoesNotFit()
    {
        // dQ, dK, dV fit in the headroom, the fp32 dQ accumulators do not: a new stream has no pooled workspace yet, so the
        // pool must grow (by at least 32 MiB, one split's accumulators) while only ~16 MiB are left.
        var device = GpuRequirement.SkipIfUnavailable();
        using var problem = BackwardProblem.Create();
        var stream = CudaStream.Create(device);
        try
        {
            long gradients = 3 * problem.Q.ByteLength;
            AssertOutOfMemoryThenSameResult(device, problem.Random, headroom: gradients + (16L << 20), expectedRequest: null,
                call: () => problem.Backward(stream), reference: () => problem.Backward(CudaStream.Legacy),
                checkRequest: requested => Assert.True(requested >= 2 * problem.Q.ByteLength,
                    $"the failed allocation ({requested} bytes) is smaller than the fp32 dQ accumulator: it was not the workspace"));
        }
        finally
        {
            stream.Dispose();
            WorkspacePool.Release(); // the pool would keep the test stream's buffer under its (now dead) handle
        }
    }

    [Fact]
    public void KvCacheAttentionThrowsAndLeavesNothingBehind()
    {
        // 64 sequences, 16 queries each (speculative decoding), over ragged caches; no append, so repeating the call repeats
        // the result.
        var device = GpuRequirement.SkipIfUnavailable();
        var inputs = Inputs<Half>.Create(new Problem(64, 16, 256, 64, 8, 128));      // O: 16 MiB
        int[] lengths = [.. Enumerable.Range(0, 64).Select(b => 100 + b * 37 % 157)];
        using var q = CudaTensor<Half>.FromHost(inputs.QTensor);
        using var kCache = CudaTensor<Half>.FromHost(inputs.KTensor);
        using var vCache = CudaTensor<Half>.FromHost(inputs.VTensor);
        using var seqlens = CudaTensor<int>.FromHost(Tensor.Create(lengths, [lengths.Length]));
        AssertOutOfMemoryThenSameResult(device, inputs.Random, headroom: 0, expectedRequest: q.ByteLength, call: () =>
        {
            using var result = FlashAttention.ForwardWithKvCache(q, kCache, vCache, cacheSeqlens: seqlens, options: Causal);
            return [.. Bytes(result.Output), .. Bytes(result.LogSumExp)];
        });
    }

    /// <summary>
    /// Runs <paramref name="reference"/> (default: <paramref name="call"/>) for the expected bits, fills the GPU but for
    /// <paramref name="headroom"/>, checks that <paramref name="call"/> throws and leaks nothing, frees the filler, and
    /// checks that <paramref name="call"/> then returns the same bits.
    /// </summary>
    private static void AssertOutOfMemoryThenSameResult(CudaDevice device, TestRandom random, long headroom, long? expectedRequest,
        Func<byte[]> call, Func<byte[]>? reference = null, Action<long>? checkRequest = null)
    {
        byte[] expected = (reference ?? call)();   // also compiles and loads the kernels, and sizes the legacy stream's workspace
        device.Synchronize();
        // Tensors that earlier tests dropped without disposing are freed now, not in the middle of the measurement.
        GC.Collect();
        GC.WaitForPendingFinalizers();

        CudaOutOfMemoryException error;
        long freeBefore, freeAfter, heldBefore, heldAfter, filled;
        using (var filler = DeviceMemoryFiller.Fill(device, headroom))
        {
            filled = filler.Bytes;
            (freeBefore, _) = device.GetMemoryInfo();
            heldBefore = WorkspacePool.HeldBytes;
            error = Assert.Throws<CudaOutOfMemoryException>(() => call());
            device.Synchronize();
            (freeAfter, _) = device.GetMemoryInfo();
            heldAfter = WorkspacePool.HeldBytes;
        }
        string context = string.Create(CultureInfo.InvariantCulture,
            $"{random}; filled {CudaOutOfMemoryException.FormatBytes(filled)}, headroom {CudaOutOfMemoryException.FormatBytes(headroom)}");

        Assert.Equal(CudaResult.OutOfMemory, error.Result);
        if (expectedRequest is { } bytes)
            Assert.True(error.RequestedBytes == bytes, $"the failed allocation asked for {error.RequestedBytes} bytes, not the output's {bytes}. {context}");
        checkRequest?.Invoke(error.RequestedBytes);
        Assert.Contains(string.Create(CultureInfo.InvariantCulture, $"({error.RequestedBytes} bytes)"), error.Message);
        Assert.Contains(CudaOutOfMemoryException.FormatBytes(error.RequestedBytes), error.Message);
        Assert.Contains("Fix:", error.Message);
        Assert.True(freeAfter >= freeBefore - FreeMemorySlack,
            $"free device memory went from {freeBefore} to {freeAfter} bytes across the failed call: something it allocated was not freed. {context}");
        Assert.True(heldAfter <= heldBefore, $"the workspace pool grew from {heldBefore} to {heldAfter} bytes across the failed call. {context}");

        byte[] again = call();
        Assert.True(expected.AsSpan().SequenceEqual(again), $"the call after the memory came back differs from the one before the fill. {context}");
    }

    private static byte[] Bytes<T>(CudaTensor<T> tensor, CudaStream? stream = null) where T : unmanaged
    {
        var host = tensor.ToHost(stream);
        var values = new T[host.FlattenedLength];
        host.FlattenTo(values);
        return MemoryMarshal.AsBytes(values.AsSpan()).ToArray();
    }

    /// <summary>Deterministic causal backward over one problem (q, dO: 16 MiB each), its forward computed once up front.</summary>
    private sealed class BackwardProblem : IDisposable
    {
        private static readonly AttentionOptions Options = new() { Causal = true, Deterministic = true };
        private readonly CudaTensor<Half> _k, _v, _dOut;
        private readonly CudaAttentionResult<Half> _forward;

        private BackwardProblem(TestRandom random, CudaTensor<Half> q, CudaTensor<Half> k, CudaTensor<Half> v, CudaTensor<Half> dOut)
        {
            Random = random;
            Q = q;
            _k = k;
            _v = v;
            _dOut = dOut;
            _forward = FlashAttention.Forward(q, k, v, Options);
            CudaStream.Legacy.Synchronize(); // the uploads and the forward ran on the legacy stream; backward may run on a non-blocking one
        }

        public TestRandom Random { get; }
        public CudaTensor<Half> Q { get; }

        public static BackwardProblem Create()
        {
            var inputs = Inputs<Half>.Create(new Problem(1, 4096, 4096, 16, 16, 128));
            return new BackwardProblem(inputs.Random, CudaTensor<Half>.FromHost(inputs.QTensor), CudaTensor<Half>.FromHost(inputs.KTensor),
                CudaTensor<Half>.FromHost(inputs.VTensor), CudaTensor<Half>.FromHost(inputs.DOutTensor));
        }

        /// <summary>dQ, dK and dV as bytes, computed on <paramref name="stream"/>.</summary>
        public byte[] Backward(CudaStream stream)
        {
            using var grads = FlashAttention.Backward(_dOut, Q, _k, _v, _forward.Output, _forward.LogSumExp, Options, stream: stream);
            return [.. Bytes(grads.DQ, stream), .. Bytes(grads.DK, stream), .. Bytes(grads.DV, stream)];
        }

        public void Dispose()
        {
            _forward.Dispose();
            _dOut.Dispose();
            _v.Dispose();
            _k.Dispose();
            Q.Dispose();
        }
    }
}
