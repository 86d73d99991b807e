using System.Runtime.InteropServices;

namespace FlashAttn.Cuda.Interop;

/// <summary>
/// Everything the library search reads from the outside world, replaceable so that tests can run the search against
/// a made-up machine without touching process-wide state.
/// </summary>
internal sealed class LibrarySearchEnvironment
{
    public required Func<string, string?> GetEnvironmentVariable { get; init; }
    public required bool IsWindows { get; init; }
    public required string? HomeDirectory { get; init; }
    public required Func<string, bool> DirectoryExists { get; init; }
    public required Func<string, bool> FileExists { get; init; }

    /// <summary>Subfolders of a folder matching a pattern (empty when the folder is missing or unreadable).</summary>
    public required Func<string, string, IReadOnlyList<string>> GetDirectories { get; init; }

    /// <summary>Loads a library by path or bare name: the handle, or 0 and the loader's error.</summary>
    public required Func<string, (nint Handle, string? Error)> Load { get; init; }

    /// <summary>The real machine.</summary>
    public static LibrarySearchEnvironment Current { get; } = new()
    {
        GetEnvironmentVariable = Environment.GetEnvironmentVariable,
        IsWindows = OperatingSystem.IsWindows(),
        HomeDirectory = GetHome(),
        DirectoryExists = Directory.Exists,
        FileExists = File.Exists,
        GetDirectories = SafeGetDirectories,
        Load = LoadLibrary,
    };

    private static string? GetHome()
    {
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return string.IsNullOrEmpty(home) ? Environment.GetEnvironmentVariable("HOME") : home;
    }

    private static IReadOnlyList<string> SafeGetDirectories(string path, string pattern)
    {
        try
        {
            if (!Directory.Exists(path))
                return [];
            var found = Directory.GetDirectories(path, pattern);
            Array.Sort(found, StringComparer.Ordinal);
            Array.Reverse(found); // python3.12 before python3.10: newest first
            return found;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            return [];
        }
    }

    private static (nint, string?) LoadLibrary(string pathOrName)
    {
        try
        {
            return (NativeLibrary.Load(pathOrName), null);
        }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException)
        {
            return (0, Compact(e.Message));
        }
    }

    /// <summary>The loader's message on one line, without .NET's generic advice, at most 300 characters.</summary>
    private static string Compact(string message)
    {
        string oneLine = string.Join(' ', message.Split(['\r', '\n'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        // "...consider setting the LD_DEBUG environment variable: <dlerror text>": keep the dlerror text.
        const string advice = "environment variable: ";
        int cut = oneLine.LastIndexOf(advice, StringComparison.Ordinal);
        if (cut >= 0 && cut + advice.Length < oneLine.Length)
            oneLine = oneLine[(cut + advice.Length)..];
        return oneLine.Length <= 300 ? oneLine : string.Concat(oneLine.AsSpan(0, 297), "...");
    }
}
