using FlashAttn.Validation;

namespace FlashAttn.Cpu;

/// <summary>
/// Forward's fp32 copies of K and V for every (sequence, kv head), packed once and shared by all query
/// blocks and all query heads of a GQA group: K transposed per key block ([d_pad][Bc], so QK^T is a
/// plain row-major product) and V row-major ([rows][d_pad]); padding is zero.
/// </summary>
internal sealed unsafe class KeyValuePack : IDisposable
{
    private const int Bc = CpuTiling.KeyBlock;
    private readonly NativeBuffer _keysT, _values;
    private readonly PaddedLayout _layout;
    public int PaddedHeadDim { get; }

    private KeyValuePack(PaddedLayout layout, int paddedHeadDim)
    {
        _layout = layout;
        PaddedHeadDim = paddedHeadDim;
        _keysT = new NativeBuffer(layout.TotalFloats);
        _values = new NativeBuffer(layout.TotalFloats);
    }

    public static KeyValuePack Create<T>(ProblemShape shape, Operand<T> k, Operand<T> v, CancellationToken ct) where T : unmanaged
    {
        int dp = CpuTiling.PadHeadDim(shape.HeadDim);
        var pack = new KeyValuePack(new PaddedLayout(shape.KLength, Bc, shape.HeadsKv, dp), dp);
        try
        {
            Parallel.For(0, shape.Batch * shape.HeadsKv, new ParallelOptions { CancellationToken = ct }, index =>
            {
                int b = index / shape.HeadsKv, h = index % shape.HeadsKv;
                float* kt = pack.KeysTransposed(b, h, 0), vv = pack.Values(b, h);
                float* row = stackalloc float[dp];
                for (int j = 0; j < shape.KLength[b]; j++)
                {
                    int absolute = shape.KStart[b] + j;
                    Elements.ToFloat(v.At(b, absolute, h), vv + (long)j * dp, shape.HeadDim);
                    Elements.ToFloat(k.At(b, absolute, h), row, shape.HeadDim);
                    float* block = kt + (long)(j / Bc) * Bc * dp;
                    for (int c = 0; c < shape.HeadDim; c++) block[c * Bc + j % Bc] = row[c];
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

    /// <summary>Key block <paramref name="block"/> of (batch, head), transposed: [d_pad][Bc].</summary>
    public float* KeysTransposed(int batch, int head, int block) => _keysT.Pointer + _layout.Base(batch, head) + (long)block * Bc * PaddedHeadDim;

    /// <summary>Value rows of (batch, head): [rows][d_pad].</summary>
    public float* Values(int batch, int head) => _values.Pointer + _layout.Base(batch, head);

    public void Dispose()
    {
        _keysT.Dispose();
        _values.Dispose();
    }
}
