using System.Text;

namespace FlashAttn.Cuda.Interop;

/// <summary>The outcome of a search: a handle (0 when nothing loaded), where it came from, and every place tried.</summary>
internal sealed record LibrarySearchResult(nint Handle, string? LoadedFrom, IReadOnlyList<string> Tried, string FailureMessage);

/// <summary>
/// Finds one native library. Order: the explicit setting, the environment variable, $CUDA_PATH and $CUDA_HOME,
/// /usr/local/cuda/lib64, the loader's own search (LD_LIBRARY_PATH, ld.so.cache; PATH on Windows), the
/// distribution's driver folders (driver only), then pip wheels (nvidia/*/lib in site-packages folders) and $CONDA_PREFIX/lib.
/// The first candidate that loads wins; each candidate tried is recorded with why it failed.
/// </summary>
internal static class LibrarySearch
{
    /// <summary>The site-packages patterns scanned for pip's nvidia wheels, as shown to the user.</summary>
    internal static readonly string[] SitePackagesPatterns =
    [
        "/opt/*/.venv/lib/python3*/site-packages",
        "/opt/*/venv/lib/python3*/site-packages",
        "$VIRTUAL_ENV/lib/python3*/site-packages",
        "~/.local/lib/python3*/site-packages",
        "/usr/lib/python3/dist-packages",
        "/usr/local/lib/python3*/dist-packages",
        "/usr/local/lib/python3*/site-packages",
    ];

    public static LibrarySearchResult Search(LibrarySpec spec, string? explicitSetting, LibrarySearchEnvironment env)
    {
        var tried = new List<string>();
        nint handle = 0;
        string? loadedFrom = null;

        bool TryFile(string path)
        {
            if (!env.FileExists(path))
            {
                tried.Add($"{path}: not found");
                return false;
            }
            string? companion = spec.CompanionOf(Path.GetFileName(path));
            if (companion is not null)
            {
                string companionPath = Path.Combine(Path.GetDirectoryName(path) ?? "", companion);
                if (env.FileExists(companionPath))
                    env.Load(companionPath); // best effort; the main load below reports any real problem
            }
            var (h, error) = env.Load(path);
            if (h != 0)
            {
                handle = h;
                loadedFrom = path;
                return true;
            }
            tried.Add($"{path}: {error}");
            return false;
        }

        bool TryFolder(string folder)
        {
            if (!env.DirectoryExists(folder))
            {
                tried.Add($"{folder}: folder not found");
                return false;
            }
            foreach (string name in spec.FileNames)
                if (TryFile(Path.Combine(folder, name)))
                    return true;
            return false;
        }

        bool TryExplicit(string label, string? value)
        {
            if (string.IsNullOrWhiteSpace(value))
            {
                tried.Add($"{label}: not set");
                return false;
            }
            tried.Add($"{label} = {value}");
            return env.DirectoryExists(value) ? TryFolder(value) : TryFile(value);
        }

        bool TryToolkitRoot(string variable)
        {
            string? root = env.GetEnvironmentVariable(variable);
            if (string.IsNullOrWhiteSpace(root))
            {
                tried.Add($"${variable}: not set");
                return false;
            }
            string[] subfolders = env.IsWindows ? ["bin", Path.Combine("bin", "x64")] : ["lib64", "lib"];
            foreach (string sub in subfolders)
                if (TryFolder(Path.Combine(root, sub)))
                    return true;
            return false;
        }

        bool TryLoaderPath()
        {
            foreach (string name in spec.FileNames)
            {
                var (h, error) = env.Load(name);
                if (h != 0)
                {
                    handle = h;
                    loadedFrom = name + " (loader search path)";
                    return true;
                }
                tried.Add($"{name} on the loader search path{(env.IsWindows ? " (PATH)" : " (LD_LIBRARY_PATH, ld.so.cache)")}: {error}");
            }
            return false;
        }

        bool TryPipWheels()
        {
            if (spec.PipSubfolders.Count == 0 || env.IsWindows)
                return false;
            var withoutWheels = new List<string>();
            foreach (string root in SitePackagesRoots(env))
            {
                bool any = false;
                foreach (string sub in spec.PipSubfolders)
                {
                    string folder = Path.Combine(root, sub);
                    if (!env.DirectoryExists(folder))
                        continue;
                    any = true;
                    if (TryFolder(folder))
                        return true;
                }
                if (!any)
                    withoutWheels.Add(root);
            }
            tried.Add($"pip wheels ({string.Join(", ", spec.PipSubfolders)}) under {string.Join(", ", SitePackagesPatterns)}: " +
                      (withoutWheels.Count == 0 ? "no other site-packages folder found" : "none in " + string.Join(", ", withoutWheels)));
            string? conda = env.GetEnvironmentVariable("CONDA_PREFIX");
            if (!string.IsNullOrWhiteSpace(conda) && TryFolder(Path.Combine(conda, "lib")))
                return true;
            return false;
        }

        _ = TryExplicit(spec.SettingName, explicitSetting)
            || TryExplicit(spec.EnvironmentVariable, env.GetEnvironmentVariable(spec.EnvironmentVariable))
            || (spec.SearchToolkitFolders && (TryToolkitRoot("CUDA_PATH") || TryToolkitRoot("CUDA_HOME")
                                              || (!env.IsWindows && TryFolder("/usr/local/cuda/lib64"))))
            || TryLoaderPath()
            || spec.SystemFolders.Any(TryFolder)
            || TryPipWheels();

        return new LibrarySearchResult(handle, loadedFrom, tried, handle != 0 ? "" : FormatFailure(spec, tried));
    }

    /// <summary>The folders that may hold pip's nvidia wheels, existing ones only, newest Python first.</summary>
    internal static IEnumerable<string> SitePackagesRoots(LibrarySearchEnvironment env)
    {
        foreach (string opt in env.GetDirectories("/opt", "*"))
            foreach (string venv in new[] { ".venv", "venv" })
                foreach (string py in env.GetDirectories(Path.Combine(opt, venv, "lib"), "python3*"))
                    yield return Path.Combine(py, "site-packages");
        string? virtualEnv = env.GetEnvironmentVariable("VIRTUAL_ENV");
        if (!string.IsNullOrWhiteSpace(virtualEnv))
            foreach (string py in env.GetDirectories(Path.Combine(virtualEnv, "lib"), "python3*"))
                yield return Path.Combine(py, "site-packages");
        if (!string.IsNullOrEmpty(env.HomeDirectory))
            foreach (string py in env.GetDirectories(Path.Combine(env.HomeDirectory, ".local", "lib"), "python3*"))
                yield return Path.Combine(py, "site-packages");
        if (env.DirectoryExists("/usr/lib/python3/dist-packages"))
            yield return "/usr/lib/python3/dist-packages";
        foreach (string py in env.GetDirectories("/usr/local/lib", "python3*"))
        {
            yield return Path.Combine(py, "dist-packages");
            yield return Path.Combine(py, "site-packages");
        }
    }

    internal static string FormatFailure(LibrarySpec spec, IReadOnlyList<string> tried)
    {
        var text = new StringBuilder();
        text.Append(spec.DisplayName).Append(" could not be loaded (looked for ")
            .Append(string.Join(" or ", spec.FileNames)).AppendLine("). Searched, in order:");
        foreach (string line in tried)
            text.Append("  - ").AppendLine(line);
        text.Append(spec.Fix);
        return text.ToString();
    }
}
