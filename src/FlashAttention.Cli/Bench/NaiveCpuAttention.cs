using System.Numerics.Tensors;

namespace FlashAttn.Cli.Bench;

/// <summary>
/// The unfused baseline ("naive" rows): what a framework's math attention does. Per (batch, head), in parallel
/// over heads: gather the head contiguously, materialise S = scale * Q K^T (seqlen x seqlen, fp32), mask, softmax,
/// O = P V; backward from the stored P (dV = P^T dO, dP = dO V^T, dS = P (dP - rowsum(P dP)), dQ = dS K, dK = dS^T Q).
/// Inner loops are vectorised dot products and axpys (TensorPrimitives); no tiling, no fusion. Buffers are allocated
/// once and reused across calls (as a framework's caching allocator would), so timings carry no GC noise.
/// Layout (batch, seqlen, heads, headdim), heads_kv = heads, fp32.
/// </summary>
internal sealed class NaiveCpuAttention
{
    private readonly int _batch, _seqlen, _heads, _headDim;
    private readonly bool _causal;
    private readonly float _scale;
    /// <summary>Per (batch, head): P (seqlen x seqlen) and the gathered q, k, v, dO, O, dQ, dK, dV heads (seqlen x headdim).</summary>
    private readonly float[][] _probabilities;
    private readonly float[][][] _headBuffers;
    private readonly float[] _output, _dq, _dk, _dv;

    public NaiveCpuAttention(int batch, int seqlen, int heads, int headDim, bool causal)
    {
        (_batch, _seqlen, _heads, _headDim, _causal) = (batch, seqlen, heads, headDim, causal);
        _scale = 1f / MathF.Sqrt(headDim);
        int count = batch * heads;
        _probabilities = [.. Enumerable.Range(0, count).Select(_ => new float[seqlen * seqlen])];
        _headBuffers = [.. Enumerable.Range(0, count).Select(_ => Enumerable.Range(0, 8).Select(_ => new float[seqlen * headDim]).ToArray())];
        int elements = batch * seqlen * heads * headDim;
        (_output, _dq, _dk, _dv) = (new float[elements], new float[elements], new float[elements], new float[elements]);
    }

    private int Stride => _heads * _headDim;

    /// <summary>O = softmax(scale Q K^T + mask) V; P stays for backward.</summary>
    public float[] Forward(float[] q, float[] k, float[] v, CancellationToken ct)
    {
        Parallel.For(0, _batch * _heads, new ParallelOptions { CancellationToken = ct }, bh =>
        {
            int b = bh / _heads, h = bh % _heads, d = _headDim, n = _seqlen;
            float[][] buffers = _headBuffers[bh];
            float[] qh = Gather(q, b, h, buffers[0]), kh = Gather(k, b, h, buffers[1]), vh = Gather(v, b, h, buffers[2]), o = buffers[3];
            float[] p = _probabilities[bh];
            Array.Clear(o);
            for (int i = 0; i < n; i++)
            {
                var row = p.AsSpan(i * n, n);
                var qi = qh.AsSpan(i * d, d);
                for (int j = 0; j < n; j++)
                    row[j] = _causal && j > i ? float.NegativeInfinity : _scale * TensorPrimitives.Dot(qi, kh.AsSpan(j * d, d));
                float max = TensorPrimitives.Max(row);
                TensorPrimitives.Subtract(row, max, row);
                TensorPrimitives.Exp(row, row);
                TensorPrimitives.Divide(row, TensorPrimitives.Sum(row), row);
                var oi = o.AsSpan(i * d, d);
                for (int j = 0; j < n; j++)
                    TensorPrimitives.MultiplyAdd(vh.AsSpan(j * d, d), row[j], oi, oi);
            }
            Scatter(o, _output, b, h);
        });
        return _output;
    }

    /// <summary>Gradients from the P of the last forward.</summary>
    public (float[] DQ, float[] DK, float[] DV) Backward(float[] dOut, float[] q, float[] k, float[] v, CancellationToken ct)
    {
        Parallel.For(0, _batch * _heads, new ParallelOptions { CancellationToken = ct }, bh =>
        {
            int b = bh / _heads, h = bh % _heads, d = _headDim, n = _seqlen;
            float[][] buffers = _headBuffers[bh];
            float[] qh = Gather(q, b, h, buffers[0]), kh = Gather(k, b, h, buffers[1]), vh = Gather(v, b, h, buffers[2]);
            float[] doh = Gather(dOut, b, h, buffers[4]), dqh = buffers[5], dkh = buffers[6], dvh = buffers[7];
            Array.Clear(dqh);
            Array.Clear(dkh);
            Array.Clear(dvh);
            float[] p = _probabilities[bh];
            Span<float> dS = new float[n];
            for (int i = 0; i < n; i++)
            {
                var row = p.AsSpan(i * n, n);
                var doi = doh.AsSpan(i * d, d);
                for (int j = 0; j < n; j++)
                {
                    var dvj = dvh.AsSpan(j * d, d);
                    TensorPrimitives.MultiplyAdd(doi, row[j], dvj, dvj);
                    dS[j] = TensorPrimitives.Dot(doi, vh.AsSpan(j * d, d));
                }
                float rowDot = TensorPrimitives.Dot(row, dS);
                TensorPrimitives.Subtract(dS, rowDot, dS);
                TensorPrimitives.Multiply(dS, row, dS);
                TensorPrimitives.Multiply(dS, _scale, dS);
                var qi = qh.AsSpan(i * d, d);
                var dqi = dqh.AsSpan(i * d, d);
                for (int j = 0; j < n; j++)
                {
                    TensorPrimitives.MultiplyAdd(kh.AsSpan(j * d, d), dS[j], dqi, dqi);
                    var dkj = dkh.AsSpan(j * d, d);
                    TensorPrimitives.MultiplyAdd(qi, dS[j], dkj, dkj);
                }
            }
            Scatter(dqh, _dq, b, h);
            Scatter(dkh, _dk, b, h);
            Scatter(dvh, _dv, b, h);
        });
        return (_dq, _dk, _dv);
    }

    /// <summary>One head as a contiguous (seqlen, headdim) matrix.</summary>
    private float[] Gather(float[] x, int b, int h, float[] head)
    {
        for (int s = 0; s < _seqlen; s++)
            x.AsSpan((b * _seqlen + s) * Stride + h * _headDim, _headDim).CopyTo(head.AsSpan(s * _headDim));
        return head;
    }

    private void Scatter(float[] head, float[] x, int b, int h)
    {
        for (int s = 0; s < _seqlen; s++)
            head.AsSpan(s * _headDim, _headDim).CopyTo(x.AsSpan((b * _seqlen + s) * Stride + h * _headDim));
    }
}
