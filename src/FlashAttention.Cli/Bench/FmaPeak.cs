using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace FlashAttn.Cli.Bench;

/// <summary>
/// The machine's measured fp32 fused-multiply-add peak: a register-only loop of 12 independent FMA chains (enough to
/// cover FMA latency times the number of FMA pipes on current x64 and Arm cores) at the widest accelerated vector,
/// one task per logical core through Parallel.For. Best of a few trials, in GFLOP/s (an FMA counts as 2 FLOPs).
/// One loop per width on purpose: a generic loop over the engine's IVectorOps measured 6x below these (the JIT kept
/// the twelve chains out of registers), which would inflate every "% of peak".
/// </summary>
internal static class FmaPeak
{
    private const int Accumulators = 12;
    private const int Trials = 5;

    public sealed record Result(double Gflops, string Width, int Threads);

    public static Result Measure(TimeSpan perTrial)
    {
        int threads = Environment.ProcessorCount;
        var (width, lanes, kernel) = Vector512.IsHardwareAccelerated ? ("Vector512", Vector512<float>.Count, (Func<long, float>)Loop512)
            : Vector256.IsHardwareAccelerated ? ("Vector256", Vector256<float>.Count, Loop256)
            : ("Vector128", Vector128<float>.Count, (Func<long, float>)Loop128);

        // Calibrate the iteration count on one thread so a trial lasts about perTrial.
        long iterations = 1 << 16;
        kernel(iterations);
        var sw = Stopwatch.StartNew();
        while (true)
        {
            sw.Restart();
            kernel(iterations);
            if (sw.Elapsed.TotalSeconds > perTrial.TotalSeconds / 8) break;
            iterations *= 2;
        }
        iterations = (long)(iterations * perTrial.TotalSeconds / sw.Elapsed.TotalSeconds);

        double best = 0;
        var sink = new float[threads];
        for (int trial = 0; trial < Trials; trial++)
        {
            sw.Restart();
            Parallel.For(0, threads, new ParallelOptions { MaxDegreeOfParallelism = threads }, t => sink[t] = kernel(iterations));
            double seconds = sw.Elapsed.TotalSeconds;
            best = Math.Max(best, 2.0 * lanes * Accumulators * iterations * threads / seconds / 1e9);
        }
        GC.KeepAlive(sink);
        return new(best, width, threads);
    }

    // acc = acc * m + a with m just below 1 stays bounded and normal, so no overflow or denormal slow-down.
    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Loop512(long iterations)
    {
        var m = Vector512.Create(0.999999f);
        var a = Vector512.Create(1e-6f);
        Vector512<float> x0 = Vector512.Create(1f), x1 = x0 + a, x2 = x1 + a, x3 = x2 + a, x4 = x3 + a, x5 = x4 + a,
            x6 = x5 + a, x7 = x6 + a, x8 = x7 + a, x9 = x8 + a, x10 = x9 + a, x11 = x10 + a;
        for (long i = 0; i < iterations; i++)
        {
            x0 = Vector512.FusedMultiplyAdd(x0, m, a); x1 = Vector512.FusedMultiplyAdd(x1, m, a);
            x2 = Vector512.FusedMultiplyAdd(x2, m, a); x3 = Vector512.FusedMultiplyAdd(x3, m, a);
            x4 = Vector512.FusedMultiplyAdd(x4, m, a); x5 = Vector512.FusedMultiplyAdd(x5, m, a);
            x6 = Vector512.FusedMultiplyAdd(x6, m, a); x7 = Vector512.FusedMultiplyAdd(x7, m, a);
            x8 = Vector512.FusedMultiplyAdd(x8, m, a); x9 = Vector512.FusedMultiplyAdd(x9, m, a);
            x10 = Vector512.FusedMultiplyAdd(x10, m, a); x11 = Vector512.FusedMultiplyAdd(x11, m, a);
        }
        return Vector512.Sum(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Loop256(long iterations)
    {
        var m = Vector256.Create(0.999999f);
        var a = Vector256.Create(1e-6f);
        Vector256<float> x0 = Vector256.Create(1f), x1 = x0 + a, x2 = x1 + a, x3 = x2 + a, x4 = x3 + a, x5 = x4 + a,
            x6 = x5 + a, x7 = x6 + a, x8 = x7 + a, x9 = x8 + a, x10 = x9 + a, x11 = x10 + a;
        for (long i = 0; i < iterations; i++)
        {
            x0 = Vector256.FusedMultiplyAdd(x0, m, a); x1 = Vector256.FusedMultiplyAdd(x1, m, a);
            x2 = Vector256.FusedMultiplyAdd(x2, m, a); x3 = Vector256.FusedMultiplyAdd(x3, m, a);
            x4 = Vector256.FusedMultiplyAdd(x4, m, a); x5 = Vector256.FusedMultiplyAdd(x5, m, a);
            x6 = Vector256.FusedMultiplyAdd(x6, m, a); x7 = Vector256.FusedMultiplyAdd(x7, m, a);
            x8 = Vector256.FusedMultiplyAdd(x8, m, a); x9 = Vector256.FusedMultiplyAdd(x9, m, a);
            x10 = Vector256.FusedMultiplyAdd(x10, m, a); x11 = Vector256.FusedMultiplyAdd(x11, m, a);
        }
        return Vector256.Sum(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11);
    }

    [MethodImpl(MethodImplOptions.NoInlining | MethodImplOptions.AggressiveOptimization)]
    private static float Loop128(long iterations)
    {
        var m = Vector128.Create(0.999999f);
        var a = Vector128.Create(1e-6f);
        Vector128<float> x0 = Vector128.Create(1f), x1 = x0 + a, x2 = x1 + a, x3 = x2 + a, x4 = x3 + a, x5 = x4 + a,
            x6 = x5 + a, x7 = x6 + a, x8 = x7 + a, x9 = x8 + a, x10 = x9 + a, x11 = x10 + a;
        for (long i = 0; i < iterations; i++)
        {
            x0 = Vector128.FusedMultiplyAdd(x0, m, a); x1 = Vector128.FusedMultiplyAdd(x1, m, a);
            x2 = Vector128.FusedMultiplyAdd(x2, m, a); x3 = Vector128.FusedMultiplyAdd(x3, m, a);
            x4 = Vector128.FusedMultiplyAdd(x4, m, a); x5 = Vector128.FusedMultiplyAdd(x5, m, a);
            x6 = Vector128.FusedMultiplyAdd(x6, m, a); x7 = Vector128.FusedMultiplyAdd(x7, m, a);
            x8 = Vector128.FusedMultiplyAdd(x8, m, a); x9 = Vector128.FusedMultiplyAdd(x9, m, a);
            x10 = Vector128.FusedMultiplyAdd(x10, m, a); x11 = Vector128.FusedMultiplyAdd(x11, m, a);
        }
        return Vector128.Sum(x0 + x1 + x2 + x3 + x4 + x5 + x6 + x7 + x8 + x9 + x10 + x11);
    }
}
