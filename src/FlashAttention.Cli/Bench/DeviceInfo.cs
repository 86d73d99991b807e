using System.Runtime.InteropServices;
using System.Text.RegularExpressions;

namespace FlashAttn.Cli.Bench;

/// <summary>How results name the machine: a file-name slug ("cpu-amd-epyc-7763-16core") and a readable name.</summary>
internal sealed partial record DeviceInfo(string Slug, string Name)
{
    public static DeviceInfo Cpu()
    {
        int cores = Environment.ProcessorCount;
        string model = CpuModel() ?? RuntimeInformation.ProcessArchitecture.ToString();
        return new($"cpu-{Shorten(model)}-{cores}core", $"{model} ({cores} threads)");
    }

    /// <summary>The fraction of all CPU time that other processes used over a short window (Linux /proc/stat),
    /// or null where unknown. Call it while this process is idle.</summary>
    public static double? BusyFraction(TimeSpan window)
    {
        try
        {
            if (CpuTimes() is not { } before) return null;
            Thread.Sleep(window);
            if (CpuTimes() is not { } after) return null;
            double total = after.Total - before.Total, idle = after.Idle - before.Idle;
            return total > 0 ? Math.Clamp(1 - idle / total, 0, 1) : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>Jiffies of the aggregate "cpu" line: all, and idle + iowait.</summary>
    private static (double Total, double Idle)? CpuTimes()
    {
        if (!File.Exists("/proc/stat")) return null;
        string? line = File.ReadLines("/proc/stat").FirstOrDefault(l => l.StartsWith("cpu ", StringComparison.Ordinal));
        if (line is null) return null;
        var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1)
            .Select(f => double.Parse(f, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        return fields.Length < 5 ? null : (fields.Sum(), fields[3] + fields[4]);
    }

    /// <summary>"model name" of /proc/cpuinfo on Linux; null elsewhere.</summary>
    private static string? CpuModel()
    {
        try
        {
            if (!File.Exists("/proc/cpuinfo")) return null;
            return File.ReadLines("/proc/cpuinfo")
                .Where(l => l.StartsWith("model name", StringComparison.Ordinal))
                .Select(l => l[(l.IndexOf(':') + 1)..].Trim())
                .FirstOrDefault(m => m.Length > 0);
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>"AMD EPYC 7763 64-Core Processor" -> "amd-epyc-7763"; "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz" -> "intel-xeon-platinum-8375c".</summary>
    private static string Shorten(string model)
    {
        string s = model.ToLowerInvariant();
        s = Noise().Replace(s, " ");
        s = NonAlphanumeric().Replace(s, "-").Trim('-');
        return s.Length == 0 ? "unknown" : s;
    }

    [GeneratedRegex(@"\((r|tm)\)|@.*$|\b\d+-core\b|\b(processor|cpu)\b")]
    private static partial Regex Noise();

    [GeneratedRegex("[^a-z0-9]+")]
    private static partial Regex NonAlphanumeric();
}
