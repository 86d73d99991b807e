namespace FlashAttn.Training.Data;

/// <summary>
/// A corpus as one stream of token ids: each document's ids followed by <see cref="Gpt2Tokenizer.EndOfText"/>, documents in
/// the corpus's order. Tokenised once; any number of <see cref="CorpusTokenSource"/>s (one per run, each with its seed) read it.
/// </summary>
public sealed class TokenizedCorpus
{
    private readonly int[] _tokens;

    /// <summary>A corpus over given ids (tests, or text tokenised elsewhere).</summary>
    /// <param name="tokens">The stream; copied.</param>
    /// <param name="vocabSize">Every id must be in [0, vocabSize).</param>
    /// <param name="source">Where the text came from, for reports.</param>
    /// <param name="tokenizer">Which tokenizer made the ids, for reports.</param>
    /// <param name="documents">How many documents the stream holds.</param>
    /// <exception cref="CorpusException">No tokens.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An id outside the vocabulary, or a vocabulary under 1.</exception>
    public TokenizedCorpus(IEnumerable<int> tokens, int vocabSize, string source, string tokenizer, int documents = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 1);
        _tokens = [.. tokens];
        if (_tokens.Length == 0)
            throw new CorpusException($"The corpus {source} gives no tokens; pass a text file or folder with --corpus.");
        int bad = Array.FindIndex(_tokens, t => t < 0 || t >= vocabSize);
        if (bad >= 0)
            throw new ArgumentOutOfRangeException(nameof(tokens), $"token {bad} is {_tokens[bad]}, outside the vocabulary [0, {vocabSize}).");
        VocabSize = vocabSize;
        Source = source;
        Tokenizer = tokenizer;
        Documents = documents;
    }

    /// <summary>The vocabulary the ids come from.</summary>
    public int VocabSize { get; }

    /// <summary>Where the text came from (a path).</summary>
    public string Source { get; }

    /// <summary>The tokenizer's name.</summary>
    public string Tokenizer { get; }

    /// <summary>Documents in the stream.</summary>
    public int Documents { get; }

    /// <summary>Tokens in the stream.</summary>
    public int Count => _tokens.Length;

    /// <summary>The stream.</summary>
    public ReadOnlySpan<int> Tokens => _tokens;

    /// <summary>Reads <paramref name="path"/> (see <see cref="TextCorpus.Load"/>; the licence texts when null) and tokenises it with GPT-2's BPE.</summary>
    /// <exception cref="CorpusException">The path does not exist or holds no text.</exception>
    public static TokenizedCorpus Load(string? path = null) => Tokenize(TextCorpus.Load(path));

    /// <summary>Tokenises <paramref name="corpus"/> with GPT-2's BPE, an end-of-text id after each document.</summary>
    public static TokenizedCorpus Tokenize(TextCorpus corpus)
    {
        var tokenizer = Gpt2Tokenizer.Shared;
        var ids = new List<int>();
        foreach (var document in corpus.Documents)
        {
            ids.AddRange(tokenizer.Encode(document.Text));
            ids.Add(Gpt2Tokenizer.EndOfText);
        }
        return new TokenizedCorpus(ids, Gpt2Tokenizer.VocabSize, corpus.Source, Gpt2Tokenizer.Name, corpus.Documents.Count);
    }
}
