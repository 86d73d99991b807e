using System.Numerics;
using FlashAttn.Dropout;

namespace FlashAttn.Reference;

/// <summary>The geometry of a fixed-length reference problem: q (batch, seqlen_q, heads_q, d), k and v (batch, seqlen_k, heads_kv, d).</summary>
internal readonly record struct ReferenceShape(int Batch, int SeqlenQ, int SeqlenK, int HeadsQ, int HeadsKv, int HeadDim)
{
    public int GroupSize => HeadsQ / HeadsKv;
    public int QElements => Batch * SeqlenQ * HeadsQ * HeadDim;
    public int KvElements => Batch * SeqlenK * HeadsKv * HeadDim;
    public int LseElements => Batch * HeadsQ * SeqlenQ;
    public long ScoreElements => (long)Batch * HeadsQ * SeqlenQ * SeqlenK;
}

/// <summary>
/// The attention options as the reference reads them, written out in full (no defaults left to resolve).
/// Kept apart from <see cref="AttentionSettings"/> on purpose: the oracle must not share the engine's code.
/// </summary>
internal sealed record ReferenceSettings
{
    /// <summary>Multiplier of QK^T.</summary>
    public required double Scale { get; init; }

    /// <summary>0 = off; otherwise logits are cap * tanh(scale * S / cap).</summary>
    public double Softcap { get; init; }

    /// <summary>-1 = unlimited.</summary>
    public int WindowLeft { get; init; } = -1;

    /// <summary>-1 = unlimited. Causal is expressed as 0 here.</summary>
    public int WindowRight { get; init; } = -1;

    /// <summary>ALiBi slopes indexed by [globalBatch * HeadsQ + head]; null = none.</summary>
    public double[]? AlibiSlopes { get; init; }

    /// <summary>Heads_q of the whole problem (for indexing slopes and the dropout stream).</summary>
    public required int HeadsQ { get; init; }

    public float DropoutProbability { get; init; }
    public DropoutState DropoutState { get; init; }

    /// <summary>Global batch index of the reference's batch 0 (varlen: run the reference per sequence with BatchOffset = sequence index).</summary>
    public int BatchOffset { get; init; }

    /// <summary>
    /// The reference settings of an <see cref="AttentionOptions"/> for a problem with <paramref name="batch"/> sequences
    /// (the global count: per-head ALiBi slopes are repeated over it).
    /// </summary>
    public static ReferenceSettings From(AttentionOptions options, int headDim, int batch, int headsQ, DropoutState? dropoutState = null)
    {
        double[]? slopes = null;
        if (options.AlibiSlopes is { } tensor)
        {
            var flat = new float[tensor.FlattenedLength];
            tensor.FlattenTo(flat);
            slopes = new double[batch * headsQ];
            for (int b = 0; b < batch; b++)
                for (int h = 0; h < headsQ; h++)
                    slopes[b * headsQ + h] = tensor.Rank == 2 ? flat[b * headsQ + h] : flat[h];
        }
        return new ReferenceSettings
        {
            Scale = options.SoftmaxScale is { } s ? s : 1.0 / Math.Sqrt(headDim),
            Softcap = options.Softcap,
            WindowLeft = options.WindowLeft,
            WindowRight = options.Causal ? 0 : options.WindowRight,
            AlibiSlopes = slopes,
            HeadsQ = headsQ,
            DropoutProbability = options.DropoutProbability,
            DropoutState = dropoutState ?? options.DropoutState ?? default,
        };
    }

    /// <summary>flash-attn's visibility rule, bottom-right aligned: key j is visible to query i when
    /// j &lt; sk and (left &lt; 0 or j &gt;= i + sk - sq - left) and (right &lt; 0 or j &lt;= i + sk - sq + right).</summary>
    public bool IsVisible(int i, int j, int seqlenQ, int seqlenK)
    {
        long diagonal = (long)i + seqlenK - seqlenQ;
        return j >= 0 && j < seqlenK
            && (WindowLeft < 0 || j >= diagonal - WindowLeft)
            && (WindowRight < 0 || j <= diagonal + WindowRight);
    }
}

/// <summary>Forward results of the reference. Layouts: O like q, (batch, seqlen_q, heads_q, d); LSE (batch, heads_q, seqlen_q);
/// P and PDropped (batch, heads_q, seqlen_q, seqlen_k).</summary>
internal sealed class ReferenceForward<TReal>
{
    public required TReal[] Output { get; init; }
    public required TReal[] LogSumExp { get; init; }

    /// <summary>Softmax probabilities before dropout (0 where masked).</summary>
    public required TReal[] Probabilities { get; init; }

    /// <summary>P * keep / (1 - p), the matrix that multiplies V (equal to P when dropout is off).</summary>
    public required TReal[] DroppedProbabilities { get; init; }

    /// <summary>Keep bit of every (batch, head, i, j): true when kept or dropout is off.</summary>
    public required bool[] Kept { get; init; }
}

/// <summary>Gradients of the reference: dQ like q; dK and dV like k and v, summed over each GQA group.</summary>
internal sealed class ReferenceGradients<TReal>
{
    public required TReal[] DQ { get; init; }
    public required TReal[] DK { get; init; }
    public required TReal[] DV { get; init; }
    public required ReferenceForward<TReal> Forward { get; init; }
}

/// <summary>
/// The materialised attention oracle: the full score matrix, a plain softmax and plain products, with no
/// tiling and no online rescaling, written independently of the CPU engine (it shares only the dropout
/// mask's specification, <see cref="DropoutMask.IsKept"/>). Instantiated with double it is the float64
/// reference of the tests; with float it is the "naive fp32" baseline against which the tolerance is set.
/// Inputs are dense flat arrays: q [b][i][h][c], k and v [b][j][hk][c], dO like q.
/// </summary>
internal static class ReferenceAttention
{
    /// <summary>The forward. A non-null <c>roundOperand</c> rounds the probabilities before they multiply V, as an unfused
    /// computation in a 16-bit type stores its softmax (and as the fused kernels feed P to the tensor cores).</summary>
    public static ReferenceForward<TReal> Forward<TReal>(ReferenceShape shape, ReferenceSettings settings,
        TReal[] q, TReal[] k, TReal[] v, Func<TReal, TReal>? roundOperand = null) where TReal : IFloatingPointIeee754<TReal>
    {
        CheckLengths(shape, q, k, v);
        int sq = shape.SeqlenQ, sk = shape.SeqlenK, d = shape.HeadDim;
        var output = new TReal[shape.QElements];
        var lse = new TReal[shape.LseElements];
        var p = new TReal[shape.ScoreElements];
        var pDropped = new TReal[shape.ScoreElements];
        var kept = new bool[shape.ScoreElements];
        var rowP = new TReal[sk];
        var rowT = new TReal[sk];
        var rowKeep = new TReal[sk];
        var mask = DropoutFor(settings);
        for (int b = 0; b < shape.Batch; b++)
            for (int h = 0; h < shape.HeadsQ; h++)
                for (int i = 0; i < sq; i++)
                {
                    TReal rowLse = SoftmaxRow(shape, settings, mask, q, k, b, h, i, rowP, rowT, rowKeep);
                    lse[(b * shape.HeadsQ + h) * sq + i] = rowLse;
                    long pBase = ((long)(b * shape.HeadsQ + h) * sq + i) * sk;
                    var o = output.AsSpan(QIndex(shape, b, i, h, 0), d);
                    for (int j = 0; j < sk; j++)
                    {
                        TReal pd = rowP[j] * rowKeep[j];
                        p[pBase + j] = rowP[j];
                        pDropped[pBase + j] = pd;
                        kept[pBase + j] = rowKeep[j] != TReal.Zero;
                        if (pd == TReal.Zero) continue;
                        if (roundOperand is not null) pd = roundOperand(pd);
                        int kvBase = KvIndex(shape, b, j, h / shape.GroupSize, 0);
                        for (int c = 0; c < d; c++) o[c] += pd * v[kvBase + c];
                    }
                }
        return new ReferenceForward<TReal> { Output = output, LogSumExp = lse, Probabilities = p, DroppedProbabilities = pDropped, Kept = kept };
    }

    /// <summary>
    /// Gradients of sum(O * dO) with respect to q, k, v. D = rowsum(dO * O) uses <paramref name="outputForDelta"/> when given
    /// (a baseline that, like the fused kernels, reads a stored output rounded to its element type), else this forward's O.
    /// A non-null <c>roundOperand</c> rounds P and dS before their products, as an unfused 16-bit computation stores them.
    /// <paramref name="probabilitiesFromLse"/> recomputes P as exp(logit - LSE) from the row's log-sum-exp held in TReal, as a
    /// FlashAttention backward recomputes it from the stored fp32 LSE: at |LSE| ~ 1e4 that rounding (half an ulp of |LSE|,
    /// 4.9e-4 at 1.2e4 in fp32) is as large as fp16's own, so a baseline that normalises exactly would understate what the
    /// algorithm can reach there.
    /// </summary>
    public static ReferenceGradients<TReal> Backward<TReal>(ReferenceShape shape, ReferenceSettings settings,
        TReal[] q, TReal[] k, TReal[] v, TReal[] dOut, TReal[]? outputForDelta = null, Func<TReal, TReal>? roundOperand = null,
        bool probabilitiesFromLse = false)
        where TReal : IFloatingPointIeee754<TReal>
    {
        CheckLengths(shape, q, k, v);
        if (dOut.Length != shape.QElements) throw new ArgumentException("dOut must be shaped like q.", nameof(dOut));
        var forward = Forward(shape, settings, q, k, v, roundOperand);
        var o = outputForDelta ?? forward.Output;
        int sq = shape.SeqlenQ, sk = shape.SeqlenK, d = shape.HeadDim;
        var dq = new TReal[shape.QElements];
        var dk = new TReal[shape.KvElements];
        var dv = new TReal[shape.KvElements];
        var rowP = new TReal[sk];
        var rowT = new TReal[sk];
        var rowKeep = new TReal[sk];
        var mask = DropoutFor(settings);
        TReal scale = TReal.CreateChecked(settings.Scale);
        bool softcap = settings.Softcap > 0;
        for (int b = 0; b < shape.Batch; b++)
            for (int h = 0; h < shape.HeadsQ; h++)
            {
                int hk = h / shape.GroupSize;
                for (int i = 0; i < sq; i++)
                {
                    SoftmaxRow(shape, settings, mask, q, k, b, h, i, rowP, rowT, rowKeep, probabilitiesFromLse);
                    int qBase = QIndex(shape, b, i, h, 0);
                    TReal delta = TReal.Zero;
                    for (int c = 0; c < d; c++) delta += dOut[qBase + c] * o[qBase + c];
                    for (int j = 0; j < sk; j++)
                    {
                        if (rowP[j] == TReal.Zero) continue; // masked (or underflowed): no gradient flows
                        int kvBase = KvIndex(shape, b, j, hk, 0);
                        TReal dP = TReal.Zero;
                        for (int c = 0; c < d; c++) dP += dOut[qBase + c] * v[kvBase + c];
                        TReal pd = rowP[j] * rowKeep[j];
                        if (roundOperand is not null) pd = roundOperand(pd);
                        for (int c = 0; c < d; c++) dv[kvBase + c] += pd * dOut[qBase + c];
                        TReal dX = rowP[j] * (rowKeep[j] * dP - delta);
                        TReal dS = dX * (softcap ? TReal.One - rowT[j] * rowT[j] : TReal.One);
                        dS = (roundOperand is null ? dS : roundOperand(dS)) * scale;
                        for (int c = 0; c < d; c++)
                        {
                            dq[qBase + c] += dS * k[kvBase + c];
                            dk[kvBase + c] += dS * q[qBase + c];
                        }
                    }
                }
            }
        return new ReferenceGradients<TReal> { DQ = dq, DK = dk, DV = dv, Forward = forward };
    }

    /// <summary>Index of element c of (batch, row, head) in a dense q-shaped array.</summary>
    public static int QIndex(ReferenceShape s, int b, int i, int h, int c) => ((b * s.SeqlenQ + i) * s.HeadsQ + h) * s.HeadDim + c;

    /// <summary>Index of element c of (batch, row, kv head) in a dense k-shaped array.</summary>
    public static int KvIndex(ReferenceShape s, int b, int j, int hk, int c) => ((b * s.SeqlenK + j) * s.HeadsKv + hk) * s.HeadDim + c;

    /// <summary>
    /// One softmax row: fills P (0 where hidden), tanh(scale * S / cap) when soft-capping, and keep / (1 - p)
    /// (0 where dropped, 1 without dropout). Returns the log-sum-exp, +inf when no key is visible. With
    /// <paramref name="fromLse"/>, P = exp(x - LSE) instead of exp(x - max) / sum.
    /// </summary>
    private static TReal SoftmaxRow<TReal>(ReferenceShape shape, ReferenceSettings settings, DropoutMask? mask, TReal[] q, TReal[] k,
        int b, int h, int i, TReal[] rowP, TReal[] rowT, TReal[] rowKeep, bool fromLse = false) where TReal : IFloatingPointIeee754<TReal>
    {
        int sq = shape.SeqlenQ, sk = shape.SeqlenK, d = shape.HeadDim, hk = h / shape.GroupSize;
        int globalBatch = settings.BatchOffset + b;
        TReal scale = TReal.CreateChecked(settings.Scale);
        TReal cap = TReal.CreateChecked(settings.Softcap);
        TReal slope = settings.AlibiSlopes is { } slopes ? TReal.CreateChecked(slopes[globalBatch * settings.HeadsQ + h]) : TReal.Zero;
        TReal keepScale = TReal.One / (TReal.One - TReal.CreateChecked((double)settings.DropoutProbability));
        int qBase = QIndex(shape, b, i, h, 0);

        TReal max = TReal.NegativeInfinity;
        for (int j = 0; j < sk; j++)
        {
            rowT[j] = TReal.Zero;
            if (!settings.IsVisible(i, j, sq, sk))
            {
                rowP[j] = TReal.NegativeInfinity;
                continue;
            }
            int kvBase = KvIndex(shape, b, j, hk, 0);
            TReal s = TReal.Zero;
            for (int c = 0; c < d; c++) s += q[qBase + c] * k[kvBase + c];
            TReal x;
            if (settings.Softcap > 0)
            {
                rowT[j] = TReal.Tanh(scale * s / cap);
                x = cap * rowT[j];
            }
            else
            {
                x = scale * s;
            }
            x -= slope * TReal.CreateChecked(Math.Abs((long)i + sk - sq - j));
            rowP[j] = x;
            max = TReal.Max(max, x);
        }

        if (TReal.IsNegativeInfinity(max))
        {
            Array.Clear(rowP);
            Array.Fill(rowKeep, TReal.One);
            return TReal.PositiveInfinity;
        }
        TReal sum = TReal.Zero;
        for (int j = 0; j < sk; j++) sum += TReal.Exp(rowP[j] - max); // exp(-inf) = 0 for hidden keys
        TReal lse = max + TReal.Log(sum);
        for (int j = 0; j < sk; j++)
        {
            rowP[j] = fromLse ? TReal.Exp(rowP[j] - lse) : TReal.Exp(rowP[j] - max) / sum;
            rowKeep[j] = mask is { } m ? (m.IsKept(globalBatch, h, i, j) ? keepScale : TReal.Zero) : TReal.One;
        }
        return lse;
    }

    private static DropoutMask? DropoutFor(ReferenceSettings settings) =>
        settings.DropoutProbability > 0f ? new DropoutMask(settings.DropoutProbability, settings.DropoutState, settings.HeadsQ) : null;

    private static void CheckLengths<TReal>(ReferenceShape shape, TReal[] q, TReal[] k, TReal[] v)
    {
        if (shape.HeadsKv <= 0 || shape.HeadsQ % shape.HeadsKv != 0)
            throw new ArgumentException("heads_kv must divide heads_q.", nameof(shape));
        if (q.Length != shape.QElements) throw new ArgumentException($"q holds {q.Length} elements, expected {shape.QElements}.", nameof(q));
        if (k.Length != shape.KvElements) throw new ArgumentException($"k holds {k.Length} elements, expected {shape.KvElements}.", nameof(k));
        if (v.Length != shape.KvElements) throw new ArgumentException($"v holds {v.Length} elements, expected {shape.KvElements}.", nameof(v));
    }
}
