namespace FlashAttn.Validation;

/// <summary>
/// The validated geometry of one attention call: sequences (a fixed-length batch or varlen's
/// concatenated sequences), heads and head dim. Every execution path consumes this one description.
/// </summary>
internal sealed class ProblemShape
{
    public required int HeadsQ { get; init; }
    public required int HeadsKv { get; init; }
    public required int HeadDim { get; init; }

    /// <summary>True for the variable-length (concatenated) layout.</summary>
    public required bool IsVarlen { get; init; }

    /// <summary>Per sequence: first token row in the q (and output) token dimension; 0 for fixed-length batches.</summary>
    public required int[] QStart { get; init; }
    public required int[] QLength { get; init; }
    public required int[] KStart { get; init; }
    public required int[] KLength { get; init; }

    /// <summary>Rows of the token dimension of q (varlen total_q, or seqlen_q for fixed batches).</summary>
    public required int TotalQ { get; init; }

    /// <summary>Rows of the token dimension of k and v (varlen total_k, or seqlen_k for fixed batches).</summary>
    public int TotalK { get; init; }

    /// <summary>Varlen on the GPU: the cumulative offsets stay in device memory, unread by the host (as flash-attn does), so
    /// QStart/KStart are unknown (0) and QLength/KLength hold the maximum lengths, upper bounds of the real ones.</summary>
    public bool OffsetsOnDevice { get; init; }

    public required int MaxSeqlenQ { get; init; }
    public required int MaxSeqlenK { get; init; }

    public int Batch => QLength.Length;
    public int GroupSize => HeadsQ / HeadsKv;

    /// <summary>Number of score elements (for FLOP counts and progress), before masking.</summary>
    public long ScoreElements
    {
        get
        {
            long total = 0;
            for (int b = 0; b < Batch; b++) total += (long)QLength[b] * KLength[b];
            return total * HeadsQ;
        }
    }

    public static ProblemShape Fixed(int batch, int seqlenQ, int seqlenK, int headsQ, int headsKv, int headDim) => new()
    {
        HeadsQ = headsQ,
        HeadsKv = headsKv,
        HeadDim = headDim,
        IsVarlen = false,
        QStart = new int[batch],
        KStart = new int[batch],
        QLength = Enumerable.Repeat(seqlenQ, batch).ToArray(),
        KLength = Enumerable.Repeat(seqlenK, batch).ToArray(),
        TotalQ = seqlenQ,
        TotalK = seqlenK,
        MaxSeqlenQ = seqlenQ,
        MaxSeqlenK = seqlenK,
    };
}
