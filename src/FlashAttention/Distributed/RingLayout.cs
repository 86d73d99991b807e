namespace FlashAttn.Distributed;

/// <summary>How a (query chunk, key chunk) pair of a ring step is masked.</summary>
public enum ChunkRelation
{
    /// <summary>Every key of the chunk is visible to every query of the chunk (non-causal, or a key chunk before the query chunk).</summary>
    Full,

    /// <summary>The same chunk on both sides under a causal mask: the causal diagonal inside it.</summary>
    Diagonal,

    /// <summary>A causal pair with the key chunk after the query chunk: nothing visible, not computed.</summary>
    Skip,
}

/// <summary>One piece of work of a ring step: a query chunk of this rank against a key/value chunk that is visiting it.</summary>
public readonly record struct ChunkPair(int QueryChunk, int KeyChunk, ChunkRelation Relation);

/// <summary>
/// Context-parallel ("ring") attention's layout: the sequence is cut into chunks, each rank keeps its query chunks, and the
/// key/value chunks travel the ring, one rank further each step, so after <see cref="Ranks"/> steps every rank has seen
/// every key. With a causal mask and <see cref="Balanced"/>, the sequence is cut into 2N chunks and rank r holds chunks r and
/// 2N-1-r, a cheap early chunk and an expensive late one, so every rank does the same causal work; otherwise rank r holds
/// chunk r of N.
/// </summary>
public sealed class RingLayout
{
    /// <param name="ranks">Ranks in the ring (GPUs, or simulated ranks on one device).</param>
    /// <param name="seqlen">Tokens in the sequence.</param>
    /// <param name="causal">Causal self-attention.</param>
    /// <param name="balanced">Mirror the chunks for causal load balance (ignored without a causal mask).</param>
    public RingLayout(int ranks, int seqlen, bool causal, bool balanced = true)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(ranks, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(seqlen);
        Ranks = ranks;
        Seqlen = seqlen;
        Causal = causal;
        Balanced = causal && balanced;
        Chunks = Balanced ? 2 * ranks : ranks;
    }

    /// <summary>Ranks in the ring.</summary>
    public int Ranks { get; }

    /// <summary>Tokens in the sequence.</summary>
    public int Seqlen { get; }

    /// <summary>Causal self-attention.</summary>
    public bool Causal { get; }

    /// <summary>Whether the chunks are mirrored for causal load balance (only with a causal mask).</summary>
    public bool Balanced { get; }

    /// <summary>Chunks the sequence is cut into: 2N when balanced, N otherwise.</summary>
    public int Chunks { get; }

    /// <summary>First token of chunk c; the chunks differ in length by at most one token.</summary>
    public int ChunkStart(int chunk) => (int)((long)Seqlen * chunk / Chunks);

    /// <summary>Tokens in chunk c.</summary>
    public int ChunkLength(int chunk) => ChunkStart(chunk + 1) - ChunkStart(chunk);

    /// <summary>The chunks rank r keeps (its queries) and starts the ring with (its keys and values).</summary>
    public IReadOnlyList<int> ChunksOf(int rank)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rank);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(rank, Ranks);
        return Balanced ? [rank, Chunks - 1 - rank] : [rank];
    }

    /// <summary>The rank whose key/value chunks rank r holds at ring step s (its own at step 0, then one rank back per step).</summary>
    public int SourceOf(int rank, int step) => ((rank - step) % Ranks + Ranks) % Ranks;

    /// <summary>The pairs rank r computes at ring step s, skipped causal pairs included (with <see cref="ChunkRelation.Skip"/>).</summary>
    public IEnumerable<ChunkPair> PairsOf(int rank, int step)
    {
        foreach (int queryChunk in ChunksOf(rank))
            foreach (int keyChunk in ChunksOf(SourceOf(rank, step)))
                yield return new ChunkPair(queryChunk, keyChunk, Relation(queryChunk, keyChunk));
    }

    private ChunkRelation Relation(int queryChunk, int keyChunk) =>
        !Causal ? ChunkRelation.Full : keyChunk < queryChunk ? ChunkRelation.Full : keyChunk == queryChunk ? ChunkRelation.Diagonal : ChunkRelation.Skip;

    /// <summary>Visible (query, key) pairs rank r computes over the whole ring: the work that balancing evens out.</summary>
    public long VisiblePairsOf(int rank)
    {
        long pairs = 0;
        for (int step = 0; step < Ranks; step++)
            foreach (var pair in PairsOf(rank, step))
            {
                long queries = ChunkLength(pair.QueryChunk), keys = ChunkLength(pair.KeyChunk);
                pairs += pair.Relation switch
                {
                    ChunkRelation.Full => queries * keys,
                    ChunkRelation.Diagonal => queries * (queries + 1) / 2,
                    _ => 0,
                };
            }
        return pairs;
    }
}
