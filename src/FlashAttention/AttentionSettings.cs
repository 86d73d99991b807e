using FlashAttn.Dropout;
using FlashAttn.Validation;

namespace FlashAttn;

/// <summary>
/// Options resolved against a validated shape: the numbers the kernels need, with every default applied.
/// Also holds the visibility rule (bottom-right aligned causal/window masks), the one definition that the
/// CPU path, block skipping and the CUDA launchers share.
/// </summary>
internal sealed class AttentionSettings
{
    public required float Scale { get; init; }
    public required float Softcap { get; init; }
    /// <summary>-1 = unlimited.</summary>
    public required int WindowLeft { get; init; }
    /// <summary>-1 = unlimited; 0 when causal.</summary>
    public required int WindowRight { get; init; }
    /// <summary>Slopes by [batch * heads_q + head] (per-head slopes repeated over the batch), or null.</summary>
    public required float[]? AlibiSlopes { get; init; }
    public required DropoutMask Dropout { get; init; }
    public required int HeadsQ { get; init; }

    public bool HasMask => WindowLeft >= 0 || WindowRight >= 0;

    public static AttentionSettings Resolve(AttentionOptions options, ProblemShape shape, DropoutState? dropoutState)
    {
        float[]? alibi = null;
        if (options.AlibiSlopes is { } slopes)
        {
            var flat = new float[slopes.FlattenedLength];
            slopes.FlattenTo(flat);
            alibi = slopes.Rank == 2 ? flat : [.. Enumerable.Range(0, shape.Batch).SelectMany(_ => flat)];
        }
        return new AttentionSettings
        {
            Scale = options.SoftmaxScale ?? 1f / MathF.Sqrt(shape.HeadDim),
            Softcap = options.Softcap,
            WindowLeft = options.EffectiveWindowLeft,
            WindowRight = options.EffectiveWindowRight,
            AlibiSlopes = alibi,
            Dropout = new DropoutMask(options.DropoutProbability, dropoutState ?? default, shape.HeadsQ),
            HeadsQ = shape.HeadsQ,
        };
    }

    public float AlibiSlope(int batch, int head) => AlibiSlopes is null ? 0f : AlibiSlopes[batch * HeadsQ + head];

    /// <summary>Key <paramref name="col"/> is visible to query <paramref name="row"/> (positions in their sequences);
    /// the diagonal is bottom-right aligned: offset = seqlen_k - seqlen_q.</summary>
    public bool IsVisible(int row, int col, int seqlenQ, int seqlenK)
    {
        long diagonal = (long)row + seqlenK - seqlenQ;
        return col < seqlenK
            && (WindowLeft < 0 || col >= diagonal - WindowLeft)
            && (WindowRight < 0 || col <= diagonal + WindowRight);
    }

    /// <summary>The half-open range of keys that some query in [row0, row1) may see.</summary>
    public (int Start, int End) VisibleKeys(int row0, int row1, int seqlenQ, int seqlenK)
    {
        long offset = (long)seqlenK - seqlenQ;
        long start = WindowLeft < 0 ? 0 : row0 + offset - WindowLeft;
        long end = WindowRight < 0 ? seqlenK : row1 - 1 + offset + WindowRight + 1;
        start = Math.Clamp(start, 0, seqlenK);
        end = Math.Clamp(end, 0, seqlenK);
        return ((int)start, (int)Math.Max(start, end));
    }

    /// <summary>True when every (row, col) in the tile is visible, so the element mask can be skipped.</summary>
    public bool TileFullyVisible(int row0, int row1, int col0, int col1, int seqlenQ, int seqlenK)
    {
        if (col1 > seqlenK) return false;
        long offset = (long)seqlenK - seqlenQ;
        return (WindowRight < 0 || col1 - 1 <= row0 + offset + WindowRight)
            && (WindowLeft < 0 || col0 >= row1 - 1 + offset - WindowLeft);
    }

    /// <summary>The queries in [0, seqlenQ) that may see some key in [col0, col1): for backward's key-block loop.</summary>
    public (int Start, int End) VisibleQueries(int col0, int col1, int seqlenQ, int seqlenK)
    {
        long offset = (long)seqlenK - seqlenQ;
        // col <= row + offset + right  =>  row >= col - offset - right ; col >= row + offset - left => row <= col - offset + left
        long start = WindowRight < 0 ? 0 : col0 - offset - WindowRight;
        long end = WindowLeft < 0 ? seqlenQ : col1 - 1 - offset + WindowLeft + 1;
        start = Math.Clamp(start, 0, seqlenQ);
        end = Math.Clamp(end, 0, seqlenQ);
        return ((int)start, (int)Math.Max(start, end));
    }
}
