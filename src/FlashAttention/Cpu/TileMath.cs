using System.Numerics.Tensors;

namespace FlashAttn.Cpu;

/// <summary>Element-wise steps on score tiles (rows of <see cref="CpuTiling.KeyBlock"/> floats).</summary>
internal static unsafe class TileMath
{
    private const int Bc = CpuTiling.KeyBlock;

    /// <summary>
    /// Raw scores S = QK^T to logits: scale (or softcap: cap * tanh(scale * S / cap)), then ALiBi
    /// (-slope * |row + seqlen_k - seqlen_q - col|), then -inf outside the visible window and past seqlen_k.
    /// When <paramref name="tanhTile"/> is given, the tanh values are kept for backward's softcap derivative.
    /// </summary>
    // Full optimisation from the first call: tier-0 code of these loops runs ~3x slower.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public static void ToLogits(float* tile, int rows, int row0, int col0, int seqlenQ, int seqlenK,
        AttentionSettings settings, float slope, bool fullyVisible, float* tanhTile = null)
    {
        for (int r = 0; r < rows; r++)
        {
            var x = new Span<float>(tile + r * Bc, Bc);
            if (settings.Softcap > 0f)
            {
                TensorPrimitives.Multiply(x, settings.Scale / settings.Softcap, x);
                TensorPrimitives.Tanh(x, x);
                if (tanhTile != null) x.CopyTo(new Span<float>(tanhTile + r * Bc, Bc));
                TensorPrimitives.Multiply(x, settings.Softcap, x);
            }
            else
            {
                TensorPrimitives.Multiply(x, settings.Scale, x);
            }
            int row = row0 + r;
            if (slope != 0f)
            {
                long diagonal = (long)row + seqlenK - seqlenQ;
                for (int c = 0; c < Bc; c++) x[c] -= slope * Math.Abs(diagonal - (col0 + c));
            }
            if (!fullyVisible)
            {
                var (start, end) = settings.VisibleKeys(row, row + 1, seqlenQ, seqlenK);
                for (int c = 0; c < Bc; c++)
                {
                    int col = col0 + c;
                    if (col < start || col >= end) x[c] = float.NegativeInfinity;
                }
            }
        }
    }
}
