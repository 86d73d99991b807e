using System.Collections.Concurrent;
using FlashAttn.Cuda;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The CUDA entry points used from many host threads at once, each on a stream of its own, and from one thread over several
/// streams: forward, deterministic backward and a KV-cache decode step with append (<see cref="StreamWorkload"/>) must give
/// the same bits as the same calls made one after another on one thread and the legacy stream. What is shared between
/// callers: the primary context, the module cache (kernels compiled by the sequential pass), the per-stream workspace
/// pool and the allocator. (CudaBackwardTests covers concurrent backward calls on one shared stream.)
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaConcurrencyTests
{
    private const int Callers = 8;
    private const int Repeats = 3;
    private static readonly TimeSpan Deadline = TimeSpan.FromMinutes(5);

    [Fact]
    public void ThreadsOnTheirOwnStreamsMatchOneThread()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        var workloads = Enumerable.Range(0, Callers).Select(StreamWorkload.For).ToArray();
        var expected = Sequential(workloads);

        var streams = Enumerable.Range(0, Callers).Select(_ => CudaStream.Create(device)).ToArray();
        var actual = new byte[Callers][][][];
        var failures = new ConcurrentQueue<Exception>();
        using var start = new Barrier(Callers);
        try
        {
            var threads = Enumerable.Range(0, Callers).Select(i => new Thread(() =>
            {
                try
                {
                    start.SignalAndWait();   // all eight begin together, so their launches and copies interleave
                    actual[i] = new byte[Repeats][][];
                    for (int r = 0; r < Repeats; r++)
                    {
                        using var run = workloads[i].Start(streams[i]);
                        actual[i][r] = run.Finish();
                    }
                }
                catch (Exception e)
                {
                    failures.Enqueue(e);
                }
            }) { IsBackground = true, Name = $"caller {i}" }).ToArray();
            foreach (var thread in threads) thread.Start();
            foreach (var thread in threads)
                Assert.True(thread.Join(Deadline), $"{thread.Name} did not finish within {Deadline}: a deadlock?");
        }
        finally
        {
            foreach (var stream in streams) stream.Dispose();
        }

        Assert.True(failures.IsEmpty, $"{failures.Count} caller(s) failed; the first: {failures.FirstOrDefault()}");
        for (int i = 0; i < Callers; i++)
            for (int r = 0; r < Repeats; r++)
                AssertSame(expected[i], actual[i][r], $"{workloads[i].Name}, repeat {r} on thread {i}");
    }

    [Fact]
    public void StreamsDrivenFromOneThreadMatchSequentialCalls()
    {
        // Every workload is started on its own stream before any is waited for, so their kernels can overlap on the GPU;
        // then all streams are synchronised and read back.
        var device = GpuRequirement.SkipIfUnavailable();
        var workloads = Enumerable.Range(0, Callers).Select(StreamWorkload.For).ToArray();
        var expected = Sequential(workloads);

        var streams = Enumerable.Range(0, Callers).Select(_ => CudaStream.Create(device)).ToArray();
        var runs = new StreamWorkload.Run?[Callers];
        try
        {
            for (int i = 0; i < Callers; i++)
                runs[i] = workloads[i].Start(streams[i]);
            foreach (var stream in streams) stream.Synchronize();
            for (int i = 0; i < Callers; i++)
                AssertSame(expected[i], runs[i]!.Finish(), $"{workloads[i].Name} on stream {i}");
        }
        finally
        {
            foreach (var run in runs) run?.Dispose();
            foreach (var stream in streams) stream.Dispose();
        }
    }

    /// <summary>The reference: each workload in turn on this thread and the legacy stream (this also compiles every kernel).</summary>
    private static byte[][][] Sequential(StreamWorkload[] workloads) => [.. workloads.Select(workload =>
    {
        using var run = workload.Start(CudaStream.Legacy);
        return run.Finish();
    })];

    private static void AssertSame(byte[][] expected, byte[][] actual, string context)
    {
        Assert.Equal(expected.Length, actual.Length);
        for (int n = 0; n < expected.Length; n++)
        {
            int at = expected[n].AsSpan().CommonPrefixLength(actual[n]);
            Assert.True(at == expected[n].Length && actual[n].Length == expected[n].Length,
                $"{StreamWorkload.ResultNames[n]} differs from the sequential result at byte {at} of {expected[n].Length}: {context}");
        }
    }
}
