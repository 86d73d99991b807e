using System.Runtime.CompilerServices;
using FlashAttn.Validation;

namespace FlashAttn;

/// <summary>
/// A pinned (batch, row, head, dim) view of one attention operand: the base pointer and the strides, in
/// elements, of the batch, token-row and head dimensions (headdim is contiguous). Varlen operands have
/// batch stride 0; their rows are absolute token indices. Packed tensors become views with the packed
/// tensor's strides, so nothing is copied.
/// </summary>
internal readonly unsafe struct Operand<T> where T : unmanaged
{
    public readonly T* Data;
    public readonly nint StrideBatch, StrideRow, StrideHead;

    public Operand(T* data, nint strideBatch, nint strideRow, nint strideHead)
    {
        Data = data;
        StrideBatch = strideBatch;
        StrideRow = strideRow;
        StrideHead = strideHead;
    }

    /// <summary>For a fixed (batch, seqlen, heads, d) view or a varlen (total, heads, d) view.</summary>
    public static Operand<T> Of(T* data, TensorArg view) => view.Rank == 4
        ? new(data, view.Strides[0], view.Strides[1], view.Strides[2])
        : new(data, 0, view.Strides[0], view.Strides[1]);

    /// <summary>The first element of the head vector at (batch, row, head).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public T* At(int batch, int row, int head) => Data + batch * StrideBatch + row * StrideRow + head * StrideHead;

    /// <summary>The same view moved by <paramref name="elements"/> (to a slice of a packed tensor).</summary>
    public Operand<T> Offset(nint elements) => new(Data + elements, StrideBatch, StrideRow, StrideHead);
}

/// <summary>A pinned view of the fp32 log-sum-exp: (batch, heads, seqlen_q) or varlen (heads, total_q).</summary>
internal readonly unsafe struct LseOperand
{
    public readonly float* Data;
    public readonly nint StrideBatch, StrideHead;

    public LseOperand(float* data, nint strideBatch, nint strideHead)
    {
        Data = data;
        StrideBatch = strideBatch;
        StrideHead = strideHead;
    }

    public static LseOperand Of(float* data, TensorArg view) => view.Rank == 3
        ? new(data, view.Strides[0], view.Strides[1])
        : new(data, 0, view.Strides[0]);

    /// <summary>Address of the entry for (batch, head, absolute query row).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public float* At(int batch, int head, int row) => Data + batch * StrideBatch + head * StrideHead + row;
}
