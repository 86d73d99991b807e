using System.Numerics.Tensors;
using FlashAttn.Validation;

namespace FlashAttn.Cpu;

/// <summary>
/// FlashAttention-2 backward on the CPU. P is recomputed block by block from Q, K and the saved LSE
/// (never stored). Tasks run over (sequence, kv head, key-block group): each keeps dK and dV of its key
/// block in fp32 across all query blocks and all query heads of its GQA group, and adds its dQ
/// contribution into a per-group buffer; the groups are then summed in a fixed order, so dQ is
/// deterministic whatever the thread schedule.
/// </summary>
internal static unsafe class CpuBackward
{
    private const int Br = CpuTiling.QueryBlock, Bc = CpuTiling.KeyBlock;

    /// <summary>At most this many key-block groups per sequence (more parallelism, more dQ buffers).</summary>
    private const int MaxGroups = 8;

    /// <summary>Cap on the dQ partial buffers; a shape-only rule, so the reduction order never depends on the machine.</summary>
    private const long PartialBudgetFloats = 128L << 20;

    public static void Run<T>(ProblemShape shape, AttentionSettings settings, Operand<T> dOut, Operand<T> q, Operand<T> k, Operand<T> v,
        Operand<T> output, LseOperand lse, Operand<T> dq, Operand<T> dk, Operand<T> dv, CancellationToken ct) where T : unmanaged
    {
        using var queries = QueryPack.Create(shape, q, dOut, output, lse, ct);
        int dp = queries.PaddedHeadDim;
        var qLayout = new PaddedLayout(shape.QLength, Br, shape.HeadsQ, dp);
        int groups = GroupCount(shape, qLayout);
        using var partials = new NativeBuffer(qLayout.TotalFloats * groups);

        var tasks = new List<(int Batch, int KvHead, int Group, int Groups)>();
        for (int b = 0; b < shape.Batch; b++)
        {
            int g = Math.Max(1, Math.Min(groups, CpuTiling.Blocks(shape.KLength[b], Bc)));
            for (int hk = 0; hk < shape.HeadsKv; hk++)
                for (int group = 0; group < g; group++)
                    tasks.Add((b, hk, group, g));
        }
        var options = new ParallelOptions { CancellationToken = ct };
        Parallel.For(0, tasks.Count, options,
            () => new Scratch(dp),
            (index, _, scratch) =>
            {
                var (b, hk, group, g) = tasks[index];
                for (int kb = group; kb * Bc < shape.KLength[b]; kb += g) // interleaved, so causal work spreads evenly
                    KeyBlock(shape, settings, queries, k, v, dk, dv, b, hk, kb, scratch, partials.Pointer + qLayout.TotalFloats * group, qLayout, ct);
                return scratch;
            },
            scratch => scratch.Dispose());

        // dQ = sum of the group partials, in group order.
        Parallel.For(0, shape.Batch * shape.HeadsQ, options, index =>
        {
            int b = index / shape.HeadsQ, h = index % shape.HeadsQ, d = shape.HeadDim;
            float* sum = stackalloc float[d];
            int g = Math.Max(1, Math.Min(groups, CpuTiling.Blocks(shape.KLength[b], Bc)));
            for (int r = 0; r < shape.QLength[b]; r++)
            {
                var total = new Span<float>(sum, d);
                total.Clear();
                for (int group = 0; group < g; group++)
                    TensorPrimitives.Add(total, new ReadOnlySpan<float>(partials.Pointer + qLayout.TotalFloats * group + qLayout.Base(b, h) + (long)r * dp, d), total);
                Elements.FromFloat(sum, dq.At(b, shape.QStart[b] + r, h), d);
            }
        });
    }

    private static int GroupCount(ProblemShape shape, PaddedLayout qLayout)
    {
        long perGroup = Math.Max(1, qLayout.TotalFloats);
        return (int)Math.Clamp(PartialBudgetFloats / perGroup, 1, MaxGroups);
    }

    // Full optimisation from the first call: tier-0 code of these loops runs ~3x slower.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static void KeyBlock<T>(ProblemShape shape, AttentionSettings settings, QueryPack queries, Operand<T> k, Operand<T> v,
        Operand<T> dk, Operand<T> dv, int b, int hk, int kb, Scratch s, float* dqPartials, PaddedLayout qLayout, CancellationToken ct)
        where T : unmanaged
    {
        int d = shape.HeadDim, dp = queries.PaddedHeadDim;
        int seqlenQ = shape.QLength[b], seqlenK = shape.KLength[b];
        int col0 = kb * Bc, cols = Math.Min(Bc, seqlenK - col0);
        LoadKeyBlock(shape, k, v, b, hk, col0, cols, dp, s);
        new Span<float>(s.DK, Bc * dp).Clear();
        new Span<float>(s.DV, Bc * dp).Clear();

        var (queryStart, queryEnd) = settings.VisibleQueries(col0, col0 + cols, seqlenQ, seqlenK);
        for (int h = hk * shape.GroupSize; h < (hk + 1) * shape.GroupSize; h++)
        {
            float slope = settings.AlibiSlope(b, h);
            for (int qb = queryStart / Br; qb * Br < queryEnd; qb++)
            {
                // Checked per tile: a task owns whole key columns (every query block of every head of its GQA group),
                // seconds of work for long sequences, so a check between tasks alone would leave cancellation waiting.
                ct.ThrowIfCancellationRequested();
                int row0 = qb * Br, rows = Math.Min(Br, seqlenQ - row0);
                float* qTile = queries.Q(b, h) + (long)row0 * dp, dOutTile = queries.DOut(b, h) + (long)row0 * dp;
                float* lseTile = queries.Lse(b, h) + row0, deltaTile = queries.Delta(b, h) + row0;
                float* dqTile = dqPartials + qLayout.Base(b, h) + (long)row0 * dp;

                // Recompute P = exp(logits - LSE) for this (query block, key block) tile.
                TileGemm.Multiply(qTile, dp, s.KT, Bc, s.P, Bc, Br, Bc, dp, GemmInit.Overwrite);
                bool fullyVisible = settings.TileFullyVisible(row0, row0 + rows, col0, col0 + Bc, seqlenQ, seqlenK);
                if (FusedBackwardRow.AppliesToP(settings, slope, fullyVisible))
                {
                    for (int r = 0; r < Br; r++) FusedBackwardRow.Probabilities(s.P + r * Bc, settings.Scale, lseTile[r]);
                }
                else
                {
                    TileMath.ToLogits(s.P, Br, row0, col0, seqlenQ, seqlenK, settings, slope, fullyVisible, settings.Softcap > 0f ? s.Tanh : null);
                    for (int r = 0; r < Br; r++)
                    {
                        var p = new Span<float>(s.P + r * Bc, Bc);
                        TensorPrimitives.Subtract(p, lseTile[r], p);
                        TensorPrimitives.Exp(p, p); // LSE = +inf (padded or fully masked row) gives 0
                    }
                }

                // Dropout: the PV product used Pd = P * keep / (1 - p); regenerate the same keep mask.
                float* pDropped = s.P;
                if (settings.Dropout.Enabled)
                {
                    pDropped = s.PDropped;
                    for (int r = 0; r < Br; r++)
                    {
                        var keep = new Span<float>(s.Keep + r * Bc, Bc);
                        settings.Dropout.FillRow(b, h, row0 + r, col0, keep);
                        TensorPrimitives.Multiply(new ReadOnlySpan<float>(s.P + r * Bc, Bc), keep, new Span<float>(s.PDropped + r * Bc, Bc));
                    }
                }

                // dV += Pd^T dO (Pd read transposed in place)
                TileGemm.MultiplyTransposedA(pDropped, Bc, dOutTile, dp, s.DV, dp, Bc, dp, Br, GemmInit.Accumulate);

                // dP = dO V^T;  dS = P * (keep * dP - D) * dlogit/dS
                TileGemm.Multiply(dOutTile, dp, s.VT, Bc, s.DS, Bc, Br, Bc, dp, GemmInit.Overwrite);
                if (FusedBackwardRow.AppliesToDs(settings))
                {
                    for (int r = 0; r < Br; r++) FusedBackwardRow.ScoreGradient(s.DS + r * Bc, s.P + r * Bc, deltaTile[r], settings.Scale);
                }
                else
                {
                    for (int r = 0; r < Br; r++)
                    {
                        var ds = new Span<float>(s.DS + r * Bc, Bc);
                        if (settings.Dropout.Enabled) TensorPrimitives.Multiply(ds, new ReadOnlySpan<float>(s.Keep + r * Bc, Bc), ds);
                        TensorPrimitives.Subtract(ds, deltaTile[r], ds);
                        TensorPrimitives.Multiply(ds, new ReadOnlySpan<float>(s.P + r * Bc, Bc), ds);
                        if (settings.Softcap > 0f)
                        {
                            // logit = cap * tanh(scale * S / cap)  =>  dlogit/dS = scale * (1 - tanh^2)
                            var t = new ReadOnlySpan<float>(s.Tanh + r * Bc, Bc);
                            for (int c = 0; c < Bc; c++) ds[c] *= 1f - t[c] * t[c];
                        }
                        TensorPrimitives.Multiply(ds, settings.Scale, ds);
                    }
                }

                // dK += dS^T Q ;  dQ += dS K
                TileGemm.MultiplyTransposedA(s.DS, Bc, qTile, dp, s.DK, dp, Bc, dp, Br, GemmInit.Accumulate);
                TileGemm.Multiply(s.DS, Bc, s.K, dp, dqTile, dp, Br, dp, Bc, GemmInit.Accumulate);
            }
        }

        for (int r = 0; r < cols; r++)
        {
            int row = shape.KStart[b] + col0 + r;
            Elements.FromFloat(s.DK + r * dp, dk.At(b, row, hk), d);
            Elements.FromFloat(s.DV + r * dp, dv.At(b, row, hk), d);
        }
    }

    /// <summary>K ([Bc][d_pad]), K^T and V^T ([d_pad][Bc]) of one key block in fp32, zero-padded.</summary>
    private static void LoadKeyBlock<T>(ProblemShape shape, Operand<T> k, Operand<T> v, int b, int hk, int col0, int cols, int dp, Scratch s)
        where T : unmanaged
    {
        new Span<float>(s.K, Bc * dp).Clear();
        new Span<float>(s.KT, Bc * dp).Clear();
        new Span<float>(s.VT, Bc * dp).Clear();
        float* vRow = s.Keep; // the keep tile (Br * Bc floats) is free while loading and larger than a row
        for (int r = 0; r < cols; r++)
        {
            int row = shape.KStart[b] + col0 + r;
            Elements.ToFloat(k.At(b, row, hk), s.K + r * dp, shape.HeadDim);
            Elements.ToFloat(v.At(b, row, hk), vRow, shape.HeadDim);
            for (int c = 0; c < shape.HeadDim; c++)
            {
                s.KT[c * Bc + r] = s.K[r * dp + c];
                s.VT[c * Bc + r] = vRow[c];
            }
        }
    }

    private sealed class Scratch : IDisposable
    {
        private readonly NativeBuffer _buffer;
        public readonly float* K, KT, VT, DK, DV, P, PDropped, DS, Tanh, Keep;

        public Scratch(int dp)
        {
            long tile = Br * Bc, block = (long)Bc * dp;
            _buffer = new NativeBuffer(5 * block + 5 * tile);
            K = _buffer.Pointer;
            KT = K + block;
            VT = KT + block;
            DK = VT + block;
            DV = DK + block;
            P = DV + block;
            PDropped = P + tile;
            DS = PDropped + tile;
            Tanh = DS + tile;
            Keep = Tanh + tile;
        }

        public void Dispose() => _buffer.Dispose();
    }
}
