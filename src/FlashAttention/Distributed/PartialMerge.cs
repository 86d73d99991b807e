namespace FlashAttn.Distributed;

/// <summary>
/// Accumulates partial attention results over disjoint key sets into one, by their log-sum-exps: with m = max(L_acc, L),
/// O = (O_acc e^(L_acc - m) + O e^(L - m)) / (e^(L_acc - m) + e^(L - m)) and L_acc = m + ln(e^(L_acc - m) + e^(L - m)).
/// Rows are (batch, head, query); O rows are head_dim long, in fp32. A partial with LSE = +inf (a row that saw no key, the
/// library's convention) adds nothing; a row that no partial reached ends as O = 0, LSE = +inf.
/// </summary>
internal sealed class PartialMerge
{
    private readonly float[] _output;
    private readonly float[] _lse;
    private readonly int _headDim;

    public PartialMerge(int rows, int headDim)
    {
        _output = new float[(long)rows * headDim];
        _lse = new float[rows];
        Array.Fill(_lse, float.NegativeInfinity);
        _headDim = headDim;
    }

    /// <summary>Merges one row's partial (its O row and LSE) into row <paramref name="row"/>.</summary>
    public void Add(int row, ReadOnlySpan<float> output, float lse)
    {
        if (float.IsPositiveInfinity(lse) || float.IsNegativeInfinity(lse)) return;   // no key in this partial
        float old = _lse[row];
        var accumulated = _output.AsSpan(row * _headDim, _headDim);
        if (float.IsNegativeInfinity(old))
        {
            output.CopyTo(accumulated);
            _lse[row] = lse;
            return;
        }
        float m = MathF.Max(old, lse);
        float a = MathF.Exp(old - m), b = MathF.Exp(lse - m), sum = a + b;
        float wa = a / sum, wb = b / sum;
        for (int c = 0; c < accumulated.Length; c++) accumulated[c] = accumulated[c] * wa + output[c] * wb;
        _lse[row] = m + MathF.Log(sum);
    }

    /// <summary>Row <paramref name="row"/>'s merged O (zero if nothing reached it).</summary>
    public ReadOnlySpan<float> Output(int row) => _output.AsSpan(row * _headDim, _headDim);

    /// <summary>Row <paramref name="row"/>'s merged LSE (+inf if nothing reached it).</summary>
    public float Lse(int row) => float.IsNegativeInfinity(_lse[row]) ? float.PositiveInfinity : _lse[row];
}
