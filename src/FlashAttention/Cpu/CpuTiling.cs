namespace FlashAttn.Cpu;

/// <summary>Tile geometry of the CPU path, derived in one place.</summary>
internal static class CpuTiling
{
    /// <summary>Query rows per block (Br). 64 x d fp32 tiles of Q and O stay in L1/L2 with a 64 x 64 score tile.</summary>
    public const int QueryBlock = 64;

    /// <summary>Keys per block (Bc): four 512-bit vectors, so one register tile spans a whole score row.</summary>
    public const int KeyBlock = 64;

    /// <summary>Head dim padded with zeros to whole vectors, so every product runs on full vectors.</summary>
    public static int PadHeadDim(int headDim) => (headDim + TileGemm.Width - 1) / TileGemm.Width * TileGemm.Width;

    public static int Blocks(int length, int block) => (length + block - 1) / block;
}

/// <summary>
/// Offsets of per-(sequence, head) blocks in a packed fp32 buffer whose rows are padded to whole blocks:
/// sequence b, head h starts at (rowsBefore(b) * heads + h * paddedRows(b)) * rowWidth.
/// </summary>
internal sealed class PaddedLayout
{
    private readonly long[] _rowsBefore;
    private readonly int[] _paddedRows;
    private readonly int _heads, _rowWidth;

    public PaddedLayout(int[] lengths, int block, int heads, int rowWidth)
    {
        _heads = heads;
        _rowWidth = rowWidth;
        _paddedRows = [.. lengths.Select(n => CpuTiling.Blocks(n, block) * block)];
        _rowsBefore = new long[lengths.Length + 1];
        for (int b = 0; b < lengths.Length; b++) _rowsBefore[b + 1] = _rowsBefore[b] + _paddedRows[b];
    }

    /// <summary>Total floats the buffer needs.</summary>
    public long TotalFloats => _rowsBefore[^1] * _heads * _rowWidth;

    public int PaddedRows(int batch) => _paddedRows[batch];

    public long Base(int batch, int head) => (_rowsBefore[batch] * _heads + (long)head * _paddedRows[batch]) * _rowWidth;
}

/// <summary>A 64-byte aligned native fp32 buffer (tiles and packed operands), freed deterministically.</summary>
internal sealed unsafe class NativeBuffer : IDisposable
{
    public float* Pointer { get; private set; }

    public NativeBuffer(long floats, bool zero = true)
    {
        nuint bytes = (nuint)Math.Max(1, floats) * sizeof(float);
        Pointer = (float*)System.Runtime.InteropServices.NativeMemory.AlignedAlloc(bytes, 64);
        if (zero) System.Runtime.InteropServices.NativeMemory.Clear(Pointer, bytes);
    }

    public void Dispose()
    {
        if (Pointer != null) System.Runtime.InteropServices.NativeMemory.AlignedFree(Pointer);
        Pointer = null;
    }
}
