using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;

namespace FlashAttn.Cuda;

/// <summary>
/// A kernel's CUDA C++: the main file's name and text, and the headers NVRTC may include (by file name, e.g.
/// "fa_ptx.cuh"). <see cref="ContentHash"/> covers all of them, for the cubin cache key.
/// </summary>
internal sealed class KernelSource
{
    public KernelSource(string name, string text, IReadOnlyDictionary<string, string> headers)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(text);
        ArgumentNullException.ThrowIfNull(headers);
        Name = name;
        Text = text;
        Headers = headers;
        ContentHash = ComputeHash(name, text, headers);
    }

    /// <summary>The main file's name, e.g. "flash_fwd.cu" (NVRTC uses it in diagnostics).</summary>
    public string Name { get; }

    /// <summary>The main file's text.</summary>
    public string Text { get; }

    /// <summary>Headers by include name.</summary>
    public IReadOnlyDictionary<string, string> Headers { get; }

    /// <summary>Lowercase hex SHA-256 over the name and text of the main file and of every header (sorted by name).</summary>
    public string ContentHash { get; }

    private static string ComputeHash(string name, string text, IReadOnlyDictionary<string, string> headers)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void Add(string s)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(s);
            Span<byte> length = stackalloc byte[8];
            BitConverter.TryWriteBytes(length, (long)bytes.Length);
            hash.AppendData(length);
            hash.AppendData(bytes);
        }
        Add(name);
        Add(text);
        foreach (var header in headers.OrderBy(h => h.Key, StringComparer.Ordinal))
        {
            Add(header.Key);
            Add(header.Value);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }
}

/// <summary>
/// Loads kernel sources embedded in this assembly. The csproj embeds Cuda/Kernels/*.cu and *.cuh with logical names
/// "FlashAttn.Kernels.&lt;file&gt;"; every .cuh is offered to NVRTC as a header of every kernel.
/// </summary>
internal static class KernelSources
{
    internal const string ResourcePrefix = "FlashAttn.Kernels.";

    private static readonly ConcurrentDictionary<string, KernelSource> s_loaded = new(StringComparer.Ordinal);

    /// <summary>The main file (e.g. "flash_fwd.cu") with all embedded headers.</summary>
    public static KernelSource Load(string mainFile)
    {
        ArgumentException.ThrowIfNullOrEmpty(mainFile);
        return s_loaded.GetOrAdd(mainFile, static file =>
        {
            var assembly = typeof(KernelSources).Assembly;
            string[] names = assembly.GetManifestResourceNames();
            if (!names.Contains(ResourcePrefix + file, StringComparer.Ordinal))
                throw new FileNotFoundException(
                    $"No embedded kernel source '{file}'. Embedded: {string.Join(", ", names.Where(n => n.StartsWith(ResourcePrefix, StringComparison.Ordinal)).Select(n => n[ResourcePrefix.Length..]))}.");
            var headers = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (string name in names)
                if (name.StartsWith(ResourcePrefix, StringComparison.Ordinal) && name.EndsWith(".cuh", StringComparison.Ordinal))
                    headers[name[ResourcePrefix.Length..]] = Read(name);
            return new KernelSource(file, Read(ResourcePrefix + file), headers);
        });
    }

    /// <summary>The names of the embedded .cu files.</summary>
    public static IReadOnlyList<string> MainFiles =>
        typeof(KernelSources).Assembly.GetManifestResourceNames()
            .Where(n => n.StartsWith(ResourcePrefix, StringComparison.Ordinal) && n.EndsWith(".cu", StringComparison.Ordinal))
            .Select(n => n[ResourcePrefix.Length..]).Order(StringComparer.Ordinal).ToArray();

    private static string Read(string resourceName)
    {
        using var stream = typeof(KernelSources).Assembly.GetManifestResourceStream(resourceName)
                           ?? throw new FileNotFoundException($"Embedded resource '{resourceName}' is missing.");
        using var reader = new StreamReader(stream, Encoding.UTF8, detectEncodingFromByteOrderMarks: true);
        return reader.ReadToEnd();
    }
}
