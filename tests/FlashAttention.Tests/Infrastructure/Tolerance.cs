using System.Globalization;
using System.Text;

namespace FlashAttn.Tests.Infrastructure;

/// <summary>
/// The accuracy rule of DESIGN.md (flash-attn's): an implementation in precision P passes when
/// max|impl - ref64| &lt;= 2 * max|naive_P - ref64| + u * max(1, max|ref64|), where ref64 is the float64
/// reference and naive_P the unfused computation in precision P (inputs rounded to P, fp32 arithmetic,
/// outputs rounded to P), and u is <see cref="Precision{T}.FloorUnit"/> (u_P, widened for fp32: see there).
/// Infinite reference entries (the LSE of rows that see no key) must be matched exactly.
/// </summary>
internal static class Tolerance
{
    /// <summary>A documented limit widens the bound for the checks of one test (default 1: the rule as written). Only the
    /// cases TEST-MATRIX.md lists under rule 10 set it, each with the factor it documents.</summary>
    public static readonly AsyncLocal<double?> DocumentedLimitFactor = new();

    public static void AssertClose(string what, ReadOnlySpan<double> actual, ReadOnlySpan<double> reference, ReadOnlySpan<double> naive,
        double floorUnit, string context)
    {
        Assert.True(actual.Length == reference.Length, $"{what}: {actual.Length} elements, reference has {reference.Length}. {context}");
        Assert.True(naive.Length == reference.Length, $"{what}: naive baseline has {naive.Length} elements, reference has {reference.Length}. {context}");

        double maxRef = 0, naiveError = 0;
        for (int i = 0; i < reference.Length; i++)
        {
            if (double.IsInfinity(reference[i])) continue;
            maxRef = Math.Max(maxRef, Math.Abs(reference[i]));
            if (!double.IsInfinity(naive[i])) naiveError = Math.Max(naiveError, Math.Abs(naive[i] - reference[i]));
        }
        double factor = DocumentedLimitFactor.Value ?? 1;
        double bound = factor * (2 * naiveError + floorUnit * Math.Max(1, maxRef));

        double maxError = 0, sumError = 0;
        int maxAt = -1, firstBad = -1, counted = 0;
        for (int i = 0; i < reference.Length; i++)
        {
            double r = reference[i], a = actual[i];
            if (double.IsInfinity(r) || double.IsNaN(r) || double.IsNaN(a) || double.IsInfinity(a))
            {
                bool same = r.Equals(a);
                if (!same && firstBad < 0) firstBad = i;
                if (!same) maxError = double.PositiveInfinity;
                continue;
            }
            double e = Math.Abs(a - r);
            sumError += e;
            counted++;
            if (e > maxError || maxAt < 0) { maxError = e; maxAt = i; }
            if (e > bound && firstBad < 0) firstBad = i;
        }
        // Tuning aid: FA_TOL_LOG=<file> appends error/bound of every comparison, to see how close the suite runs to its bounds.
        if (Environment.GetEnvironmentVariable("FA_TOL_LOG") is { } log)
            File.AppendAllText(log, string.Create(CultureInfo.InvariantCulture, $"{maxError / bound:F3} {what} naive={naiveError:G3} floor={floorUnit * Math.Max(1, maxRef):G3} {context}\n"));
        if (firstBad < 0) return;

        var message = new StringBuilder();
        message.Append(CultureInfo.InvariantCulture, $"{what} is outside the tolerance. {context}\n");
        message.Append(CultureInfo.InvariantCulture, $"  max|impl - ref64| = {maxError:G6} (at {maxAt}), mean = {(counted > 0 ? sumError / counted : 0):G6}\n");
        string widened = factor == 1 ? "" : string.Create(CultureInfo.InvariantCulture, $"{factor:G3} x (documented limit) ");
        message.Append(CultureInfo.InvariantCulture, $"  bound = {widened}2 * {naiveError:G6} (naive error) + {floorUnit:G3} * max(1, {maxRef:G6}) = {bound:G6}\n");
        message.Append(CultureInfo.InvariantCulture, $"  first bad index {firstBad}: impl {actual[firstBad]:R}, ref64 {reference[firstBad]:R}, naive {naive[firstBad]:R}");
        Assert.Fail(message.ToString());
    }

    /// <summary>Exact equality by Equals (so NaN equals NaN and +0 equals -0), reporting the first difference.</summary>
    public static void AssertIdentical<T>(string what, ReadOnlySpan<T> actual, ReadOnlySpan<T> expected, string context = "") where T : IEquatable<T>
    {
        Assert.True(actual.Length == expected.Length, $"{what}: {actual.Length} elements, expected {expected.Length}. {context}");
        for (int i = 0; i < actual.Length; i++)
            if (!actual[i].Equals(expected[i]))
                Assert.Fail($"{what}: element {i} differs: {actual[i]} vs {expected[i]}. {context}");
    }
}
