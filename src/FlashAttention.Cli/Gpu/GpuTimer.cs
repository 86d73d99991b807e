using FlashAttn.Cuda;

namespace FlashAttn.Cli.Gpu;

/// <summary>Times GPU work with CUDA events on the stream it runs on: warm-up launches, then the median of single runs
/// (<see cref="Median"/>), or the steady-state time per call of launches queued back to back (<see cref="BackToBack"/>).</summary>
internal static class GpuTimer
{
    /// <summary>Most calls in one timed batch of <see cref="BackToBack"/> (a launch queue's worth; the batch is long enough by then).</summary>
    public const int MaxBatchCalls = 4096;

    public static (double Ms, int Runs) Median(Action launch, CudaStream stream, int warmup = 3, int runs = 20)
    {
        for (int i = 0; i < warmup; i++) launch();
        stream.Synchronize();
        using var start = CudaEvent.Create();
        using var end = CudaEvent.Create();
        var times = new double[runs];
        for (int i = 0; i < runs; i++)
        {
            start.Record(stream);
            launch();
            end.Record(stream);
            end.Synchronize();
            times[i] = CudaEvent.ElapsedMilliseconds(start, end);
        }
        Array.Sort(times);
        return (times[runs / 2], runs);
    }

    /// <summary>
    /// Steady-state milliseconds per call: a batch of calls queued back to back on one stream between one pair of events,
    /// divided by the calls, median over <paramref name="repeats"/> batches. Back to back, a call's launch overlaps the previous
    /// call's execution as in a decoding loop, and the per-call figure is well above the events' 0.5 µs resolution.
    /// </summary>
    /// <param name="launch">One call; it gets a running call index, so the caller can cycle through buffer sets.</param>
    /// <param name="stream">The stream the calls run on.</param>
    /// <param name="minCalls">Calls per batch at least (the number of buffer sets, so every batch touches each one); also the warm-up.</param>
    /// <param name="minBatchMs">Batches hold enough calls to last this long, from a timed estimate after the warm-up.</param>
    /// <param name="repeats">Timed batches; the median is reported.</param>
    /// <returns>Milliseconds per call, calls per batch, and batches.</returns>
    public static (double Ms, int Calls, int Repeats) BackToBack(Action<int> launch, CudaStream stream, int minCalls, double minBatchMs = 10,
        int repeats = 9)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(minCalls, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(repeats, 1);
        int next = 0;
        using var start = CudaEvent.Create();
        using var end = CudaEvent.Create();
        double Batch(int calls)
        {
            start.Record(stream);
            for (int i = 0; i < calls; i++) launch(next++);
            end.Record(stream);
            end.Synchronize();
            return CudaEvent.ElapsedMilliseconds(start, end);
        }

        // Warm-up: every buffer set once (first-use costs: module loads, workspace growth), then an estimate to size the batches.
        Batch(minCalls);
        double estimate = Math.Max(Batch(minCalls) / minCalls, 1e-4);
        int batchCalls = (int)Math.Clamp(Math.Ceiling(minBatchMs / estimate), minCalls, Math.Max(minCalls, MaxBatchCalls));
        var times = new double[repeats];
        for (int r = 0; r < repeats; r++) times[r] = Batch(batchCalls) / batchCalls;
        Array.Sort(times);
        return (times[repeats / 2], batchCalls, repeats);
    }
}
