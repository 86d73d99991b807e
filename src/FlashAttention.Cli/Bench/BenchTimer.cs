using System.Diagnostics;

namespace FlashAttn.Cli.Bench;

/// <summary>
/// Wall-clock timing on the CPU: warm-up runs for at least <see cref="WarmUp"/> (page faults, thread pool growth,
/// caches; the JIT needs none since the tool runs with tiered compilation off, see the project file), then the
/// median of the timed runs.
/// </summary>
internal static class BenchTimer
{
    private static readonly TimeSpan WarmUp = TimeSpan.FromSeconds(0.5);

    /// <summary>When one run takes longer than this, at most <see cref="SlowRepeats"/> timed runs are made.</summary>
    private static readonly TimeSpan Slow = TimeSpan.FromSeconds(2);
    private const int SlowRepeats = 3;

    public static (double MedianMs, int Runs) Measure(Action run, int repeats, CancellationToken ct)
    {
        var warmUp = Stopwatch.StartNew();
        TimeSpan last;
        do
        {
            long start = Stopwatch.GetTimestamp();
            run();
            last = Stopwatch.GetElapsedTime(start);
            ct.ThrowIfCancellationRequested();
        }
        while (warmUp.Elapsed < WarmUp);
        int runs = last > Slow ? Math.Min(repeats, SlowRepeats) : repeats;
        var times = new double[runs];
        for (int i = 0; i < runs; i++)
        {
            long start = Stopwatch.GetTimestamp();
            run();
            times[i] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
            ct.ThrowIfCancellationRequested();
        }
        Array.Sort(times);
        double median = runs % 2 == 1 ? times[runs / 2] : 0.5 * (times[runs / 2 - 1] + times[runs / 2]);
        return (median, runs);
    }
}
