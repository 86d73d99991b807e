using System.Globalization;

namespace FlashAttn.Cli.Bench;

/// <summary>
/// How much CPU other processes took while a row was measured: the machine's busy time (/proc/stat) minus this
/// process's own (/proc/self/stat), as a fraction of all CPU time in the interval. Linux only; elsewhere it reads 0.
/// On a shared machine this tells a clean row from one disturbed by someone else's build or test run.
/// </summary>
internal readonly record struct Contention(double Total, double Busy, double Self)
{
    public static Contention Start() => Read();

    /// <summary>The CPU share other processes use over a short idle wait of this process (a check before a run).</summary>
    public static double Sample(TimeSpan window)
    {
        var start = Start();
        Thread.Sleep(window);
        return start.OthersSince();
    }

    /// <summary>Fraction of all CPU time since <see cref="Start"/> that went to other processes (0..1).</summary>
    public double OthersSince()
    {
        var now = Read();
        double total = now.Total - Total;
        if (total <= 0) return 0;
        double others = (now.Busy - Busy) - (now.Self - Self);
        return Math.Clamp(others / total, 0, 1);
    }

    private static Contention Read()
    {
        try
        {
            if (!File.Exists("/proc/stat") || !File.Exists("/proc/self/stat")) return default;
            string? cpu = File.ReadLines("/proc/stat").FirstOrDefault(l => l.StartsWith("cpu ", StringComparison.Ordinal));
            if (cpu is null) return default;
            double[] jiffies = [.. cpu.Split(' ', StringSplitOptions.RemoveEmptyEntries).Skip(1).Select(Parse)];
            if (jiffies.Length < 5) return default;
            double total = jiffies.Sum(), idle = jiffies[3] + jiffies[4];
            // /proc/self/stat: the command name (field 2) may hold spaces, so count from the closing parenthesis;
            // utime and stime are fields 14 and 15, in the same clock ticks as /proc/stat.
            string self = File.ReadAllText("/proc/self/stat");
            string[] rest = self[(self.LastIndexOf(')') + 2)..].Split(' ');
            return new(total, total - idle, Parse(rest[11]) + Parse(rest[12]));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException)
        {
            return default; // unreadable or unexpected /proc: report no contention rather than fail the run
        }
    }

    private static double Parse(string s) => double.Parse(s, NumberStyles.Float, CultureInfo.InvariantCulture);
}
