using FlashAttn.Training;

namespace FlashAttn.Cli.Train;

/// <summary>How `flash-attn train` names the three attentions: on the command line, in result rows (DESIGN.md's impl) and in reports.</summary>
internal static class TrainAttention
{
    /// <summary>The three, in the article's order: the baseline first, ours last.</summary>
    public static readonly IReadOnlyList<AttentionKind> All = [AttentionKind.Unfused, AttentionKind.Sdpa, AttentionKind.Flash];

    /// <summary>The values of --attention.</summary>
    public static readonly string[] OptionNames = ["unfused", "sdpa", "flash", "all"];

    /// <summary>The "impl" of its result rows.</summary>
    public static string Impl(AttentionKind kind) => kind switch
    {
        AttentionKind.Unfused => "unfused",
        AttentionKind.Sdpa => "torch-sdpa",
        AttentionKind.Flash => "ours",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    /// <summary>Its name in tables and plots.</summary>
    public static string Label(AttentionKind kind) => kind switch
    {
        AttentionKind.Unfused => "unfused (native)",
        AttentionKind.Sdpa => "TorchSharp SDPA",
        AttentionKind.Flash => "ours (FlashAttention.NET)",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    /// <summary>The attentions that --attention's values select, in <see cref="All"/>'s order; all of them when none is given.</summary>
    public static IReadOnlyList<AttentionKind> Parse(IEnumerable<string>? names)
    {
        var set = new HashSet<AttentionKind>();
        foreach (string name in names ?? [])
        {
            switch (name.Trim().ToLowerInvariant())
            {
                case "unfused": set.Add(AttentionKind.Unfused); break;
                case "sdpa": set.Add(AttentionKind.Sdpa); break;
                case "flash": set.Add(AttentionKind.Flash); break;
                case "all": set.UnionWith(All); break;
                default: throw new CliException($"--attention takes unfused, sdpa, flash or all; got '{name}'.");
            }
        }
        return set.Count == 0 ? All : [.. All.Where(set.Contains)];
    }
}
