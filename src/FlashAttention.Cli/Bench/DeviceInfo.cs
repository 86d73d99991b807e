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
