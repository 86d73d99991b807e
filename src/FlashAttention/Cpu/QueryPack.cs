using System.Numerics.Tensors;
using FlashAttn.Validation;

namespace FlashAttn.Cpu;

/// <summary>
/// Backward's fp32 copies of the per-query operands for every (sequence, query head): Q and dO
/// ([rows][d_pad]), the log-sum-exp and D = rowsum(dO * O). Padded rows get LSE = +inf, so their P is 0.
/// </summary>
internal sealed unsafe class QueryPack : IDisposable
{
    private const int Br = CpuTiling.QueryBlock;
    private readonly NativeBuffer _q, _dOut, _lse, _delta;
    private readonly PaddedLayout _rows, _scalars;
    public int PaddedHeadDim { get; }

    private QueryPack(ProblemShape shape, int dp)
    {
        PaddedHeadDim = dp;
        _rows = new PaddedLayout(shape.QLength, Br, shape.HeadsQ, dp);
        _scalars = new PaddedLayout(shape.QLength, Br, shape.HeadsQ, 1);
        _q = new NativeBuffer(_rows.TotalFloats);
        _dOut = new NativeBuffer(_rows.TotalFloats);
        _lse = new NativeBuffer(_scalars.TotalFloats, zero: false);
        _delta = new NativeBuffer(_scalars.TotalFloats);
    }

    public static QueryPack Create<T>(ProblemShape shape, Operand<T> q, Operand<T> dOut, Operand<T> output, LseOperand lse, CancellationToken ct)
        where T : unmanaged
    {
        int d = shape.HeadDim, dp = CpuTiling.PadHeadDim(d);
        var pack = new QueryPack(shape, dp);
        try
        {
            Parallel.For(0, shape.Batch * shape.HeadsQ, new ParallelOptions { CancellationToken = ct }, index =>
            {
                int b = index / shape.HeadsQ, h = index % shape.HeadsQ;
                float* qs = pack.Q(b, h), dos = pack.DOut(b, h), lses = pack.Lse(b, h), deltas = pack.Delta(b, h);
                float* outRow = stackalloc float[d];
                new Span<float>(lses, pack._scalars.PaddedRows(b)).Fill(float.PositiveInfinity);
                for (int r = 0; r < shape.QLength[b]; r++)
                {
                    int row = shape.QStart[b] + r;
                    Elements.ToFloat(q.At(b, row, h), qs + (long)r * dp, d);
                    Elements.ToFloat(dOut.At(b, row, h), dos + (long)r * dp, d);
                    Elements.ToFloat(output.At(b, row, h), outRow, d);
                    deltas[r] = TensorPrimitives.Dot(new ReadOnlySpan<float>(dos + (long)r * dp, d), new ReadOnlySpan<float>(outRow, d));
                    lses[r] = *lse.At(b, h, row);
                }
            });
            return pack;
        }
        catch
        {
            pack.Dispose();
            throw;
        }
    }

    public float* Q(int batch, int head) => _q.Pointer + _rows.Base(batch, head);
    public float* DOut(int batch, int head) => _dOut.Pointer + _rows.Base(batch, head);
    public float* Lse(int batch, int head) => _lse.Pointer + _scalars.Base(batch, head);
    public float* Delta(int batch, int head) => _delta.Pointer + _scalars.Base(batch, head);

    public void Dispose()
    {
        _q.Dispose();
        _dOut.Dispose();
        _lse.Dispose();
        _delta.Dispose();
    }
}
