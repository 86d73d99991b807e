using System.Numerics.Tensors;
using FlashAttn.Validation;

namespace FlashAttn.Cpu;

/// <summary>
/// FlashAttention-2 forward on the CPU: one task per (sequence, query head, query block of Br rows),
/// streaming the visible key blocks with an online softmax, so memory stays O(seqlen).
/// </summary>
internal static unsafe class CpuForward
{
    private const int Br = CpuTiling.QueryBlock, Bc = CpuTiling.KeyBlock;

    public static void Run<T>(ProblemShape shape, AttentionSettings settings, Operand<T> q, Operand<T> k, Operand<T> v,
        Operand<T> o, LseOperand lse, CancellationToken ct) where T : unmanaged
    {
        using var pack = KeyValuePack.Create(shape, k, v, ct);
        var tasks = new List<(int Batch, int Head, int Block)>();
        for (int b = 0; b < shape.Batch; b++)
            for (int h = 0; h < shape.HeadsQ; h++)
                for (int qb = 0; qb < CpuTiling.Blocks(shape.QLength[b], Br); qb++)
                    tasks.Add((b, h, qb));
        int dp = pack.PaddedHeadDim;
        Parallel.For(0, tasks.Count, new ParallelOptions { CancellationToken = ct },
            () => new Scratch(dp),
            (index, _, scratch) =>
            {
                var (b, h, qb) = tasks[index];
                QueryBlock(shape, settings, pack, q, o, lse, b, h, qb, scratch, ct);
                return scratch;
            },
            scratch => scratch.Dispose());
    }

    // Full optimisation from the first call: tier-0 code of these loops runs ~3x slower.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static void QueryBlock<T>(ProblemShape shape, AttentionSettings settings, KeyValuePack pack, Operand<T> q,
        Operand<T> o, LseOperand lse, int b, int h, int qb, Scratch s, CancellationToken ct) where T : unmanaged
    {
        int d = shape.HeadDim, dp = pack.PaddedHeadDim, hk = h / shape.GroupSize;
        int seqlenQ = shape.QLength[b], seqlenK = shape.KLength[b];
        int row0 = qb * Br, rows = Math.Min(Br, seqlenQ - row0), tileRows = (rows + 3) & ~3;

        // Q tile in fp32, zero-padded to tileRows x d_pad.
        new Span<float>(s.Q, Br * dp).Clear();
        for (int r = 0; r < rows; r++) Elements.ToFloat(q.At(b, shape.QStart[b] + row0 + r, h), s.Q + r * dp, d);

        // Online-softmax state: running max m (-inf until a key is seen), running sum l, unnormalised O.
        new Span<float>(s.RowMax, Br).Fill(float.NegativeInfinity);
        new Span<float>(s.RowSum, Br).Clear();
        new Span<float>(s.O, Br * dp).Clear();

        float slope = settings.AlibiSlope(b, h);
        var (keyStart, keyEnd) = settings.VisibleKeys(row0, row0 + rows, seqlenQ, seqlenK);
        for (int kb = keyStart / Bc; kb * Bc < keyEnd; kb++) // blocks outside [keyStart, keyEnd) are never touched
        {
            // Checked per key block, not only between tasks: one task streams every key of its rows, which is seconds of
            // work for long keys (a decode row over a long cache). Before the writes below, so a block is all or nothing.
            ct.ThrowIfCancellationRequested();
            int col0 = kb * Bc;
            TileGemm.Multiply(s.Q, dp, pack.KeysTransposed(b, hk, kb), Bc, s.S, Bc, tileRows, Bc, dp, GemmInit.Overwrite);
            bool fullyVisible = settings.TileFullyVisible(row0, row0 + rows, col0, col0 + Bc, seqlenQ, seqlenK);
            if (FusedSoftmaxRow.Applies(settings, slope, fullyVisible))
            {
                for (int r = 0; r < tileRows; r++)
                {
                    s.Rescale[r] = FusedSoftmaxRow.Step(s.S + r * Bc, settings.Scale, ref s.RowMax[r], ref s.RowSum[r]);
                    ApplyDropout(s, r, settings, b, h, row0 + r, col0);
                }
            }
            else
            {
                TileMath.ToLogits(s.S, tileRows, row0, col0, seqlenQ, seqlenK, settings, slope, fullyVisible);
                for (int r = 0; r < tileRows; r++)
                    OnlineSoftmaxStep(s, r, settings, b, h, row0 + r, col0);
            }
            // O = diag(rescale) O + P V: the rescale of the running output is fused into the product.
            TileGemm.Multiply(s.S, Bc, pack.Values(b, hk) + (long)col0 * dp, dp, s.O, dp, tileRows, dp, Bc, GemmInit.ScaleRows, s.Rescale);
        }

        for (int r = 0; r < rows; r++)
        {
            int row = shape.QStart[b] + row0 + r;
            var outRow = new Span<float>(s.O + r * dp, d);
            float sum = s.RowSum[r];
            if (sum > 0f)
            {
                TensorPrimitives.Multiply(outRow, 1f / sum, outRow);
                *lse.At(b, h, row) = s.RowMax[r] + MathF.Log(sum);
            }
            else if (float.IsNaN(sum))
            {
                // The row read a NaN or +inf score (NaN or inf in q or k, or QK^T beyond fp32): O = NaN, not the 0 of an
                // empty row, and LSE = +inf, as the CUDA kernel and flash-attn write when the normaliser is not positive.
                outRow.Fill(float.NaN);
                *lse.At(b, h, row) = float.PositiveInfinity;
            }
            else
            {
                // The row saw no key (masked, or seqlen_k = 0): O = 0 and LSE = +inf, so backward's exp(x - LSE) = 0.
                outRow.Clear();
                *lse.At(b, h, row) = float.PositiveInfinity;
            }
            Elements.FromFloat(s.O + r * dp, o.At(b, row, h), d);
        }
    }

    /// <summary>
    /// One online-softmax step on row r of the logit tile: m_new = max(m, rowmax), P = exp(x - m_new),
    /// l = l * exp(m - m_new) + rowsum(P); the factor exp(m - m_new) rescales O in the following product.
    /// The sum uses P before dropout; dropout then zeroes or scales P for the PV product only.
    /// </summary>
    // Full optimisation from the first call: tier-0 code of these loops runs ~3x slower.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static void OnlineSoftmaxStep(Scratch s, int r, AttentionSettings settings, int b, int h, int row, int col0)
    {
        var x = new Span<float>(s.S + r * Bc, Bc);
        float previous = s.RowMax[r];
        float next = MathF.Max(previous, TensorPrimitives.Max(x));
        if (float.IsNegativeInfinity(next))
        {
            // Nothing visible yet: keep O and l as they are (both 0), avoid exp(-inf - -inf) = NaN.
            x.Clear();
            s.Rescale[r] = 1f;
            return;
        }
        float rescale = MathF.Exp(previous - next); // previous = -inf gives 0
        TensorPrimitives.Subtract(x, next, x);
        TensorPrimitives.Exp(x, x);
        s.RowSum[r] = s.RowSum[r] * rescale + TensorPrimitives.Sum(x);
        s.RowMax[r] = next;
        s.Rescale[r] = rescale;
        ApplyDropout(s, r, settings, b, h, row, col0);
    }

    /// <summary>Dropout on row r of P for the PV product only (the row sum already used P before dropout).</summary>
    private static void ApplyDropout(Scratch s, int r, AttentionSettings settings, int b, int h, int row, int col0)
    {
        if (!settings.Dropout.Enabled) return;
        var x = new Span<float>(s.S + r * Bc, Bc);
        var keep = new Span<float>(s.Keep, Bc);
        settings.Dropout.FillRow(b, h, row, col0, keep);
        TensorPrimitives.Multiply(x, keep, x);
    }

    /// <summary>Per-worker tiles, allocated once per worker thread.</summary>
    private sealed class Scratch : IDisposable
    {
        private readonly NativeBuffer _buffer;
        public readonly float* Q, O, S, RowMax, RowSum, Rescale, Keep;

        public Scratch(int dp)
        {
            _buffer = new NativeBuffer(2L * Br * dp + Br * Bc + 3 * Br + Bc);
            Q = _buffer.Pointer;
            O = Q + Br * dp;
            S = O + Br * dp;
            RowMax = S + Br * Bc;
            RowSum = RowMax + Br;
            Rescale = RowSum + Br;
            Keep = Rescale + Br;
        }

        public void Dispose() => _buffer.Dispose();
    }
}
