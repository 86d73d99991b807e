using System.Text;

namespace FlashAttn.Training.Data;

/// <summary>One text file of a <see cref="TextCorpus"/>.</summary>
/// <param name="Name">Its path relative to the corpus folder (or its file name when the corpus is one file).</param>
/// <param name="Text">Its contents, decoded as UTF-8.</param>
public sealed record TextDocument(string Name, string Text);

/// <summary>
/// Real English text to train on, read from the machine. The default is <see cref="DefaultPath"/>: the full texts of the
/// common free-software licences (GPL-1/2/3, LGPL, GFDL, Apache-2.0, MPL, Artistic, BSD, CC0) that Debian's and Ubuntu's
/// <c>base-files</c> package installs on every system, so the same corpus is there on a CPU-only Debian 12 machine and on
/// the Ubuntu 24.04 GPU machine without downloading anything.
/// <para>
/// It is small: about 264 KB of text, some 58 thousand GPT-2 tokens, so a training run at context 4096 cycles over it many
/// times. That is fine for what the experiment measures (throughput, peak memory, and whether the three attentions give the
/// same losses on the same data) and useless for model quality: the model soon memorises it. Pass another file or folder
/// (<c>--corpus</c>) for more text.
/// </para>
/// <para>
/// A folder is read recursively: every regular file, in ordinal order of its relative path (so the order is the same on
/// every machine); symbolic links are skipped (in common-licenses they are aliases such as GPL -> GPL-3 and would
/// duplicate text), and so are empty files and files holding NUL characters (binary).
/// </para>
/// </summary>
public sealed class TextCorpus
{
    /// <summary>The default corpus folder, shipped by the base-files package of Debian and Ubuntu.</summary>
    public const string DefaultPath = "/usr/share/common-licenses";

    private TextCorpus(string source, IReadOnlyList<TextDocument> documents)
    {
        Source = source;
        Documents = documents;
    }

    /// <summary>The file or folder the text came from (full path).</summary>
    public string Source { get; }

    /// <summary>The documents in reading order.</summary>
    public IReadOnlyList<TextDocument> Documents { get; }

    /// <summary>Characters over all documents.</summary>
    public long Characters => Documents.Sum(d => (long)d.Text.Length);

    /// <summary>Reads the corpus at <paramref name="path"/> (a file or a folder; <see cref="DefaultPath"/> when null).</summary>
    /// <exception cref="CorpusException">The path does not exist, or it holds no usable text.</exception>
    public static TextCorpus Load(string? path = null)
    {
        string full = Path.GetFullPath(path ?? DefaultPath);
        bool isDefault = path is null;
        if (File.Exists(full))
        {
            var text = Read(full);
            if (text is null)
                throw new CorpusException($"The corpus file {full} holds no text (it is empty or binary); pass a text file or folder with --corpus.");
            return new TextCorpus(full, [new TextDocument(Path.GetFileName(full), text)]);
        }
        if (!Directory.Exists(full))
            throw new CorpusException(isDefault
                ? $"The default corpus {full} does not exist (Debian's and Ubuntu's base-files package installs it); pass a text file or folder with --corpus."
                : $"The corpus {full} does not exist; pass an existing text file or folder with --corpus.");

        var documents = new List<TextDocument>();
        foreach (string file in Directory.EnumerateFiles(full, "*", SearchOption.AllDirectories)
                     .Select(f => (Full: f, Relative: Path.GetRelativePath(full, f).Replace('\\', '/')))
                     .OrderBy(f => f.Relative, StringComparer.Ordinal)
                     .Where(f => new FileInfo(f.Full).LinkTarget is null)
                     .Select(f => f.Relative))
        {
            if (Read(Path.Combine(full, file)) is { } text)
                documents.Add(new TextDocument(file, text));
        }
        if (documents.Count == 0)
            throw new CorpusException($"The corpus folder {full} holds no text files (only empty, binary or linked ones, or none); pass a text file or folder with --corpus.");
        return new TextCorpus(full, documents);
    }

    /// <summary>The file's text, or null when it is empty, blank or binary.</summary>
    private static string? Read(string file)
    {
        string text = File.ReadAllText(file, Encoding.UTF8);
        return string.IsNullOrWhiteSpace(text) || text.Contains('\0') ? null : text;
    }
}
