namespace FlashAttn.Training.Data;

/// <summary>
/// Training batches from a <see cref="TokenizedCorpus"/>: each sequence is a window of context + 1 consecutive tokens of the
/// corpus (inputs = the first context, targets = the last context, shifted by one), the corpus read as a ring so a window that
/// runs past its end wraps around to its start.
/// <para>
/// For a window length W = context + 1 and a corpus of T tokens, one epoch is ceil(T / W) windows starting W tokens apart from
/// a random phase, so together they cover every token (a corpus shorter than a window repeats within it). Each epoch draws a
/// new phase and a new shuffled order of its windows from a generator seeded by the seed and the context: the batches are the
/// same for the same seed, sequence of calls and corpus, on every machine and .NET version (the generator is SplitMix64, not
/// <see cref="Random"/>). Calling with another context starts that context's schedule afresh. Not thread-safe.
/// </para>
/// <para>The default corpus is small (see <see cref="TextCorpus"/>), so training cycles over it: fine for throughput and for
/// comparing losses between attentions, not for model quality.</para>
/// </summary>
public sealed class CorpusTokenSource : ITokenSource
{
    private readonly TokenizedCorpus _corpus;
    private readonly int _seed;
    private int _context = -1;
    private ulong _state;
    private int[] _order = [];
    private long _phase;
    private int _next;

    /// <summary>A source over <paramref name="corpus"/>; <paramref name="seed"/> fixes the order of the windows.</summary>
    public CorpusTokenSource(TokenizedCorpus corpus, int seed)
    {
        ArgumentNullException.ThrowIfNull(corpus);
        _corpus = corpus;
        _seed = seed;
    }

    /// <summary>Reads and tokenises <paramref name="path"/> (the licence texts when null), then streams it with <paramref name="seed"/>.</summary>
    /// <exception cref="CorpusException">The path does not exist or holds no text.</exception>
    public static CorpusTokenSource Load(string? path, int seed) => new(TokenizedCorpus.Load(path), seed);

    /// <inheritdoc/>
    public int VocabSize => _corpus.VocabSize;

    /// <summary>The corpus read.</summary>
    public TokenizedCorpus Corpus => _corpus;

    /// <summary>Epochs begun at the current context (1 after the first call).</summary>
    public int Epoch { get; private set; }

    /// <summary>Windows per epoch at <paramref name="context"/>: ceil(tokens / (context + 1)).</summary>
    public int WindowsPerEpoch(int context) => (int)((_corpus.Count + (long)context) / (context + 1L));

    /// <inheritdoc/>
    /// <returns>batch x (context + 1) ids, row-major: row i is window i of the batch.</returns>
    public long[] Next(int batch, int context)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(batch, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(context, 1);
        long window = context + 1L;
        if (batch * window > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(batch), $"batch {batch} x (context {context} + 1) ids do not fit in one array.");
        if (context != _context) Restart(context);

        var ids = new long[batch * window];
        var tokens = _corpus.Tokens;
        int count = tokens.Length;
        for (int row = 0; row < batch; row++)
        {
            if (_next == _order.Length) NewEpoch();
            long start = (_phase + _order[_next++] * window) % count;
            var destination = ids.AsSpan((int)(row * window), (int)window);
            int position = (int)start;
            for (int written = 0; written < window;)
            {
                int run = (int)Math.Min(window - written, count - position);
                for (int j = 0; j < run; j++) destination[written + j] = tokens[position + j];
                written += run;
                position = 0;
            }
        }
        return ids;
    }

    private void Restart(int context)
    {
        _context = context;
        _state = (ulong)(uint)_seed * 0x9E3779B97F4A7C15UL ^ (ulong)context * 0xD1B54A32D192ED03UL;
        _order = new int[WindowsPerEpoch(context)];
        Epoch = 0;
        NewEpoch();
    }

    /// <summary>A new random phase and a Fisher-Yates shuffle of the window indices.</summary>
    private void NewEpoch()
    {
        Epoch++;
        _phase = (long)(NextRandom() % (ulong)_corpus.Count);
        for (int i = 0; i < _order.Length; i++) _order[i] = i;
        for (int i = _order.Length - 1; i > 0; i--)
        {
            int j = (int)(NextRandom() % (ulong)(i + 1));
            (_order[i], _order[j]) = (_order[j], _order[i]);
        }
        _next = 0;
    }

    /// <summary>SplitMix64.</summary>
    private ulong NextRandom()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
