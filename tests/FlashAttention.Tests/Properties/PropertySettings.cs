using System.Globalization;

namespace FlashAttn.Tests.Properties;

/// <summary>
/// How the property tests run, read once from the environment:
/// <list type="bullet">
/// <item><c>FA_PROP_SEED</c>: the base seed from which every case of every property is derived. Unset: a fixed seed, so CI
/// runs the same cases every time. <c>random</c>: a fresh seed per run (printed in every failure). A number (decimal or
/// <c>0x</c> hex): that seed.</item>
/// <item><c>FA_PROP_ITER</c>: cases per CPU property, replacing each property's own count (e.g. 5000 for a long soak).</item>
/// <item><c>FA_PROP_REPLAY</c>: a CsCheck seed from a failure message; every property then runs only the case that seed
/// generates (filter to the property that printed it), and shrinks it further if it still fails.</item>
/// <item><c>FA_PROP_SHRINK_SECONDS</c>: how long CsCheck looks for smaller failing cases once one has failed (default 30).</item>
/// <item><c>FA_PROP_GPU_SECONDS</c> and <c>FA_PROP_GPU_ITER</c>: the budget of each CUDA property, whichever ends first
/// (default 30 s and 2000 cases).</item>
/// </list>
/// </summary>
internal sealed record PropertySettings
{
    /// <summary>The base seed CI uses.</summary>
    public const ulong DefaultSeed = 0x0F1A_5EED_2025_0011UL;

    public required ulong Seed { get; init; }
    public required bool RandomSeed { get; init; }
    public int? Iterations { get; init; }
    public string? Replay { get; init; }
    public required int ShrinkSeconds { get; init; }
    public required int GpuSeconds { get; init; }
    public required int GpuIterations { get; init; }

    public static PropertySettings Current { get; } = FromEnvironment();

    private static PropertySettings FromEnvironment()
    {
        string? seedText = Variable("FA_PROP_SEED");
        bool random = string.Equals(seedText, "random", StringComparison.OrdinalIgnoreCase);
        ulong seed = random ? (ulong)Random.Shared.NextInt64() : seedText is null ? DefaultSeed : ParseSeed(seedText);
        return new PropertySettings
        {
            Seed = seed,
            RandomSeed = random,
            Iterations = Int("FA_PROP_ITER"),
            Replay = Variable("FA_PROP_REPLAY"),
            ShrinkSeconds = Int("FA_PROP_SHRINK_SECONDS") ?? 30,
            GpuSeconds = Int("FA_PROP_GPU_SECONDS") ?? 30,
            GpuIterations = Int("FA_PROP_GPU_ITER") ?? 2000,
        };
    }

    private static string? Variable(string name) =>
        Environment.GetEnvironmentVariable(name) is { } value && !string.IsNullOrWhiteSpace(value) ? value.Trim() : null;

    private static int? Int(string name) =>
        Variable(name) is { } text ? int.Parse(text, NumberStyles.Integer, CultureInfo.InvariantCulture) : null;

    private static ulong ParseSeed(string text) =>
        text.StartsWith("0x", StringComparison.OrdinalIgnoreCase)
            ? ulong.Parse(text.AsSpan(2), NumberStyles.HexNumber, CultureInfo.InvariantCulture)
            : ulong.Parse(text, NumberStyles.Integer, CultureInfo.InvariantCulture);

    public string SeedText => string.Create(CultureInfo.InvariantCulture, $"FA_PROP_SEED=0x{Seed:X}{(RandomSeed ? " (random)" : "")}");
}
