using System.Diagnostics;
using System.Globalization;

namespace FlashAttn.Tests.Infrastructure;

/// <summary>
/// Starts long work with a token that is cancelled after <see cref="CancelAfter"/> (and, when a condition is given, once it
/// holds), and checks that the work ends with an <see cref="OperationCanceledException"/> for that token within
/// <see cref="Bound"/> of the cancellation. The work must take far longer than that (seconds, even on a 16-core machine),
/// or it may finish first.
/// </summary>
internal static class MidRunCancellation
{
    public static readonly TimeSpan CancelAfter = TimeSpan.FromMilliseconds(100);

    /// <summary>Generous for a 2-core CI machine: the CPU path checks the token per 64 x 64 tile, milliseconds of work.</summary>
    public static readonly TimeSpan Bound = TimeSpan.FromSeconds(2);

    /// <summary>Runs <paramref name="work"/>, cancels it mid-run, asserts a prompt cancellation; returns the latency.</summary>
    /// <param name="what">Names the work in failure messages.</param>
    /// <param name="work">The call to cancel.</param>
    /// <param name="cancelWhen">Polled every millisecond after <see cref="CancelAfter"/>: cancel only once it is true (e.g.
    /// once the work has written something); null to cancel at <see cref="CancelAfter"/>.</param>
    public static TimeSpan AssertCancelledPromptly(string what, Action<CancellationToken> work, Func<bool>? cancelWhen = null)
    {
        bool workEnded = false;
        using var source = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        long cancelledAt = 0;
        // A thread of its own, not CancelAfter: a timer callback waits for a thread-pool thread, and the work's
        // Parallel.For holds them all, which delayed the cancellation by seconds on 2 cores.
        var canceller = new Thread(() =>
        {
            Thread.Sleep(CancelAfter);
            var waited = Stopwatch.StartNew();
            while (cancelWhen is not null && !cancelWhen() && !Volatile.Read(ref workEnded) && waited.Elapsed < TimeSpan.FromMinutes(1))
                Thread.Sleep(1);
            Volatile.Write(ref cancelledAt, Stopwatch.GetTimestamp());
            source.Cancel();
        }) { IsBackground = true, Name = "canceller" };
        long started = Stopwatch.GetTimestamp();
        canceller.Start();
        Exception? caught = null;
        try
        {
            work(source.Token);
        }
        catch (Exception e)
        {
            caught = e;
        }
        long ended = Stopwatch.GetTimestamp();
        Volatile.Write(ref workEnded, true);
        canceller.Join();
        string ran = Seconds(Stopwatch.GetElapsedTime(started, ended));

        Assert.True(caught is not null, $"{what} finished in {ran} s, before it was cancelled: use a larger shape.");
        var cancelled = Assert.IsAssignableFrom<OperationCanceledException>(caught);
        Assert.True(cancelled.CancellationToken == source.Token, $"{what} was cancelled by another token: {caught}");
        var latency = Stopwatch.GetElapsedTime(Volatile.Read(ref cancelledAt), ended);
        Assert.True(latency <= Bound,
            $"{what} took {Seconds(latency)} s to stop after its token was cancelled (bound {Bound.TotalSeconds} s; ran {ran} s in all).");
        return latency;
    }

    private static string Seconds(TimeSpan t) => t.TotalSeconds.ToString("0.000", CultureInfo.InvariantCulture);
}
