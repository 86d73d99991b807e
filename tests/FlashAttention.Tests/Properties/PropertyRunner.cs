using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using CsCheck;

namespace FlashAttn.Tests.Properties;

/// <summary>
/// Runs a property over generated cases in two phases. Discovery is reproducible: case i is generated from a CsCheck seed
/// derived from <see cref="PropertySettings.Seed"/> and the property's name, so a fixed base seed means CI runs the same
/// cases every time (CsCheck's own <c>Sample</c> fixes only its first case). When a case fails, CsCheck's <c>Sample</c> starts
/// from that case's seed and shrinks it: it keeps generating cases and asserts those smaller than the smallest failure so far,
/// for <see cref="PropertySettings.ShrinkSeconds"/>. The failure message prints the smallest case (dtype, shape, options,
/// layout, input seed), its CsCheck seed to replay it with <c>FA_PROP_REPLAY</c>, and how it failed.
/// </summary>
internal static partial class PropertyRunner
{
    /// <summary>Runs <paramref name="property"/> on <paramref name="iterations"/> cases (or FA_PROP_ITER), in parallel.</summary>
    public static void Check<TCase>(string name, Gen<TCase> gen, Action<TCase> property, Func<TCase, string> print, int iterations)
    {
        var settings = PropertySettings.Current;
        Run(name, gen, property, print, settings.Iterations ?? iterations, timeBudget: null, parallel: true);
    }

    /// <summary>Runs <paramref name="property"/> one case at a time until the GPU budget (time or count) is spent.</summary>
    public static void CheckForBudget<TCase>(string name, Gen<TCase> gen, Action<TCase> property, Func<TCase, string> print)
    {
        var settings = PropertySettings.Current;
        Run(name, gen, property, print, settings.GpuIterations, TimeSpan.FromSeconds(settings.GpuSeconds), parallel: false);
    }

    private static void Run<TCase>(string name, Gen<TCase> gen, Action<TCase> property, Func<TCase, string> print, int iterations,
        TimeSpan? timeBudget, bool parallel)
    {
        var settings = PropertySettings.Current;
        var clock = Stopwatch.StartNew();
        if (settings.Replay is { } replay)
        {
            var (replayed, error) = Try(gen, property, replay);
            if (error is null)
            {
                Log($"{name}: FA_PROP_REPLAY={replay} passes: {print(replayed)}");
                return;
            }
            Shrink(name, gen, property, print, replay, replayed, error, $"the replayed case FA_PROP_REPLAY={replay}", parallel);
            return;
        }

        var seeds = CaseSeeds(name, settings.Seed, iterations);
        int failedAt = int.MaxValue, ran = 0;
        TCase? failedCase = default;
        Exception? failure = null;
        var gate = new object();
        void RunCase(int i, ParallelLoopState? loop)
        {
            var (value, error) = Try(gen, property, seeds[i]);
            Interlocked.Increment(ref ran);
            if (error is null) return;
            lock (gate)
            {
                if (i < failedAt) (failedAt, failedCase, failure) = (i, value, error);
            }
            loop?.Break(); // every case before i still runs, so the first failing index does not depend on scheduling
        }

        if (timeBudget is { } budget)
        {
            for (int i = 0; i < seeds.Length && failure is null && clock.Elapsed < budget; i++)
                RunCase(i, null);
        }
        else
        {
            var options = new ParallelOptions { MaxDegreeOfParallelism = parallel ? Environment.ProcessorCount : 1 };
            Parallel.For(0, seeds.Length, options, (i, loop) => RunCase(i, loop));
        }

        if (failure is null)
        {
            Log(string.Create(CultureInfo.InvariantCulture, $"{name}: {ran} cases passed in {clock.Elapsed.TotalSeconds:F1} s ({settings.SeedText})."));
            return;
        }
        Shrink(name, gen, property, print, seeds[failedAt], failedCase!, failure,
            string.Create(CultureInfo.InvariantCulture, $"case {failedAt + 1} of {seeds.Length} ({settings.SeedText})"), parallel);
    }

    /// <summary>Shrinks from a failing seed with CsCheck and fails the test with the smallest case found.</summary>
    private static void Shrink<TCase>(string name, Gen<TCase> gen, Action<TCase> property, Func<TCase, string> print, string seed,
        TCase failedCase, Exception failure, string where, bool parallel)
    {
        var settings = PropertySettings.Current;
        var message = new StringBuilder();
        message.Append(CultureInfo.InvariantCulture, $"Property '{name}' failed on {where}, CsCheck seed \"{seed}\":\n  {print(failedCase)}\n");
        try
        {
            gen.Sample(property, seed: seed, time: Math.Max(0, settings.ShrinkSeconds), threads: parallel ? Environment.ProcessorCount : 1, print: print);
        }
        catch (CsCheckException shrunk)
        {
            string smallest = SeedPattern().Match(shrunk.Message) is { Success: true } m ? m.Groups[1].Value : "?";
            message.Append(CultureInfo.InvariantCulture, $"Shrunk for {settings.ShrinkSeconds} s. CsCheck: {shrunk.Message}\n");
            message.Append(CultureInfo.InvariantCulture, $"Replay the smallest case alone: FA_PROP_REPLAY={smallest} (filter to this test).\n");
            message.Append("Failure of the smallest case:\n");
            message.Append(shrunk.InnerException?.ToString() ?? "(none recorded)");
            Assert.Fail(message.ToString());
        }
        // The seed passed when replayed: the failure depends on something besides the case (state, timing, concurrency).
        message.Append("It did NOT fail again when replayed, so it could not be shrunk (a flaky failure?). The original failure:\n");
        message.Append(failure);
        Assert.Fail(message.ToString());
    }

    /// <summary>Generates the case of one CsCheck seed and runs the property on it.</summary>
    private static (TCase Case, Exception? Error) Try<TCase>(Gen<TCase> gen, Action<TCase> property, string seed)
    {
        var value = gen.Generate(PCG.Parse(seed), null, out _);
        try
        {
            property(value);
            return (value, null);
        }
        catch (Exception e)
        {
            return (value, e);
        }
    }

    /// <summary>The CsCheck seeds of the first <paramref name="count"/> cases of a property: a PCG stream per property name.</summary>
    internal static string[] CaseSeeds(string name, ulong seed, int count)
    {
        var master = new PCG(Fnv1a(name), seed);
        var seeds = new string[Math.Max(0, count)];
        for (int i = 0; i < seeds.Length; i++)
        {
            var pcg = new PCG(master.Next(), master.Next64());
            seeds[i] = pcg.ToString(pcg.State);
        }
        return seeds;
    }

    private static uint Fnv1a(string text)
    {
        uint hash = 2166136261;
        foreach (char c in text) hash = (hash ^ c) * 16777619;
        return hash;
    }

    private static void Log(string line) => TestContext.Current.TestOutputHelper?.WriteLine(line);

    [GeneratedRegex("Set seed: \"([^\"]+)\"")]
    private static partial Regex SeedPattern();
}
