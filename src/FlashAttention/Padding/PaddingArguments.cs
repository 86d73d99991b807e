using System.Numerics.Tensors;

namespace FlashAttn.Padding;

/// <summary>Validation for <see cref="VarlenPadding"/>: every check runs before anything is allocated or written, and each
/// failure names the argument and says what it should be.</summary>
internal static class PaddingArguments
{
    /// <summary>padded is (batch, seqlen, ...) and the mask is exactly (batch, seqlen); batch * seqlen fits the int indices.</summary>
    public static (int Batch, int Seqlen) Mask<T>(in ReadOnlyTensorSpan<T> padded, in ReadOnlyTensorSpan<bool> mask, string paddedName, string maskName)
    {
        if (padded.Rank < 2)
            throw new ArgumentException($"{paddedName} has shape {Shape(padded.Lengths)}; it must be (batch, seqlen, ...).", paddedName);
        if (mask.Rank != 2 || mask.Lengths[0] != padded.Lengths[0] || mask.Lengths[1] != padded.Lengths[1])
            throw new ArgumentException($"{maskName} has shape {Shape(mask.Lengths)}; it must be (batch, seqlen) = " +
                                        $"({padded.Lengths[0]}, {padded.Lengths[1]}), the first two dimensions of {paddedName}.", maskName);
        if ((long)padded.Lengths[0] * padded.Lengths[1] > int.MaxValue)
            throw new ArgumentException($"{paddedName} has {padded.Lengths[0]} x {padded.Lengths[1]} token positions, more than int " +
                                        "indices address; split the batch.", paddedName);
        return ((int)padded.Lengths[0], (int)padded.Lengths[1]);
    }

    /// <summary>One index per token of unpadded, each within batch * seqlen and none repeated (a repeat would make the
    /// padded result depend on which write lands last).</summary>
    public static void Indices<T>(in ReadOnlyTensorSpan<T> unpadded, ReadOnlySpan<int> indices, int batch, int seqlen, string unpaddedName,
        string indicesName)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(batch);
        ArgumentOutOfRangeException.ThrowIfNegative(seqlen);
        if (unpadded.Rank < 1)
            throw new ArgumentException($"{unpaddedName} has rank 0; it must be (total_tokens, ...).", unpaddedName);
        if (indices.Length != unpadded.Lengths[0])
            throw new ArgumentException($"{indicesName} has {indices.Length} entries but {unpaddedName} {Shape(unpadded.Lengths)} has " +
                                        $"{unpadded.Lengths[0]} tokens; pass the indices that Unpad returned with these tokens.", indicesName);
        long positions = (long)batch * seqlen;
        if (positions > int.MaxValue)
            throw new ArgumentException($"batch x seqlen = {positions} positions is more than int indices address; split the batch.", nameof(batch));
        var seen = new bool[positions];
        for (int token = 0; token < indices.Length; token++)
        {
            int index = indices[token];
            if (index < 0 || index >= positions)
                throw new ArgumentException($"{indicesName}[{token}] = {index} is outside 0..{positions - 1} (batch {batch} x seqlen {seqlen}); " +
                                            "pass the batch and seqlen the tokens were unpadded from.", indicesName);
            if (seen[index])
                throw new ArgumentException($"{indicesName}[{token}] = {index} repeats an earlier index; each padded position takes one token.", indicesName);
            seen[index] = true;
        }
    }

    /// <summary>Every length within 0..max.</summary>
    public static void Lengths(ReadOnlySpan<int> seqlens, int max, string name)
    {
        for (int b = 0; b < seqlens.Length; b++)
            if (seqlens[b] < 0 || seqlens[b] > max)
                throw new ArgumentException($"{name}[{b}] = {seqlens[b]} is outside 0..{max}" +
                                            (max == int.MaxValue ? "." : $", the padded seqlen."), name);
    }

    /// <summary>The element count of one token's trailing dimensions.</summary>
    public static int RowLength(ReadOnlySpan<nint> rest, string name)
    {
        long length = 1;
        foreach (nint n in rest)
            length *= n;
        return length <= Array.MaxLength
            ? (int)length
            : throw new ArgumentException($"{name} has {length} elements per token, more than one array holds.", name);
    }

    private static string Shape(ReadOnlySpan<nint> lengths) => "(" + string.Join(", ", lengths.ToArray()) + ")";
}
