namespace FlashAttn.Validation;

/// <summary>
/// The one place where arguments are checked, before any output is allocated or any work is launched.
/// Every failure is an <see cref="ArgumentException"/> whose ParamName is the offending argument and whose
/// message says what was expected and how to fix it.
/// </summary>
internal static class ShapeValidator
{
    public const int MaxHeadDim = 256;

    /// <summary>q (batch, seqlen_q, heads_q, d), k and v (batch, seqlen_k, heads_kv, d).</summary>
    public static ProblemShape Fixed(TensorArg q, TensorArg k, TensorArg v, AttentionOptions options, Type elementType)
    {
        ElementType(elementType, q.Name);
        Rank(q, 4, "(batch, seqlen_q, heads, headdim)");
        Rank(k, 4, "(batch, seqlen_k, heads_kv, headdim)");
        Rank(v, 4, "(batch, seqlen_k, heads_kv, headdim)");
        SameLengths(k, v, v.Name, mustMatch: k.Name);
        if (k.Lengths[0] != q.Lengths[0])
            throw Fail(k.Name, $"batch {k.Lengths[0]} does not match q's batch {q.Lengths[0]}; q is {q.ShapeText}, {k.Name} is {k.ShapeText}.");
        HeadsAndDims(q, k, v, headAxis: 2);
        var shape = ProblemShape.Fixed(q.Length(0), q.Length(1), k.Length(1), q.Length(2), k.Length(2), q.Length(3));
        Options(options, shape);
        return shape;
    }

    /// <summary>q (total_q, heads_q, d), k and v (total_k, heads_kv, d) with cumulative sequence lengths.</summary>
    public static ProblemShape Varlen(TensorArg q, TensorArg k, TensorArg v, ReadOnlySpan<int> cuSeqlensQ, ReadOnlySpan<int> cuSeqlensK,
        int maxSeqlenQ, int maxSeqlenK, AttentionOptions options, Type elementType)
    {
        ElementType(elementType, q.Name);
        Rank(q, 3, "(total_q, heads, headdim)");
        Rank(k, 3, "(total_k, heads_kv, headdim)");
        Rank(v, 3, "(total_k, heads_kv, headdim)");
        SameLengths(k, v, v.Name, mustMatch: k.Name);
        HeadsAndDims(q, k, v, headAxis: 1);
        if (cuSeqlensQ.Length != cuSeqlensK.Length)
            throw Fail("cuSeqlensK", $"has {cuSeqlensK.Length} entries but cuSeqlensQ has {cuSeqlensQ.Length}; both hold batch + 1 offsets.");
        var (qStart, qLength) = Offsets(cuSeqlensQ, q.Length(0), maxSeqlenQ, "cuSeqlensQ", "maxSeqlenQ", "q");
        var (kStart, kLength) = Offsets(cuSeqlensK, k.Length(0), maxSeqlenK, "cuSeqlensK", "maxSeqlenK", "k");
        var shape = new ProblemShape
        {
            HeadsQ = q.Length(1),
            HeadsKv = k.Length(1),
            HeadDim = q.Length(2),
            IsVarlen = true,
            QStart = qStart,
            QLength = qLength,
            KStart = kStart,
            KLength = kLength,
            TotalQ = q.Length(0),
            TotalK = k.Length(0),
            MaxSeqlenQ = maxSeqlenQ,
            MaxSeqlenK = maxSeqlenK,
        };
        Options(options, shape);
        return shape;
    }

    /// <summary>
    /// Varlen with the cumulative offsets in device memory (flash-attn's <c>flash_attn_varlen_func</c> on CUDA): q (total_q,
    /// heads_q, d), k and v (total_k, heads_kv, d), offsets of batch + 1 int32 each. The offsets' contents are not read
    /// back (that would synchronise); the kernels clamp them to the token counts and the maximum lengths.
    /// </summary>
    public static ProblemShape DeviceVarlen(TensorArg q, TensorArg k, TensorArg v, TensorArg cuSeqlensQ, TensorArg cuSeqlensK, int maxSeqlenQ,
        int maxSeqlenK, AttentionOptions options, Type elementType)
    {
        ElementType(elementType, q.Name);
        Rank(q, 3, "(total_q, heads, headdim)");
        Rank(k, 3, "(total_k, heads_kv, headdim)");
        Rank(v, 3, "(total_k, heads_kv, headdim)");
        SameLengths(k, v, v.Name, mustMatch: k.Name);
        HeadsAndDims(q, k, v, headAxis: 1);
        foreach (var cu in new[] { cuSeqlensQ, cuSeqlensK })
        {
            if (cu.Lengths.Length != 1 || cu.Lengths[0] < 1)
                throw Fail(cu.Name, $"must be a vector of batch + 1 int32 cumulative offsets; got shape {cu.ShapeText}.");
            if (cu.Lengths[0] > 1 && cu.Strides[0] != 1)
                throw Fail(cu.Name, "must be contiguous (stride 1).");
        }
        if (cuSeqlensQ.Lengths[0] != cuSeqlensK.Lengths[0])
            throw Fail(cuSeqlensK.Name, $"has {cuSeqlensK.Lengths[0]} entries but {cuSeqlensQ.Name} has {cuSeqlensQ.Lengths[0]}; both hold batch + 1 offsets.");
        int totalQ = q.Length(0), totalK = k.Length(0), batch = (int)cuSeqlensQ.Lengths[0] - 1;
        if (maxSeqlenQ < 0 || maxSeqlenQ > totalQ)
            throw Fail("maxSeqlenQ", $"must be in [0, total_q = {totalQ}] (the longest query sequence); got {maxSeqlenQ}.");
        if (maxSeqlenK < 0 || maxSeqlenK > totalK)
            throw Fail("maxSeqlenK", $"must be in [0, total_k = {totalK}] (the longest key sequence); got {maxSeqlenK}.");
        var shape = new ProblemShape
        {
            HeadsQ = q.Length(1),
            HeadsKv = k.Length(1),
            HeadDim = q.Length(2),
            IsVarlen = true,
            OffsetsOnDevice = true,
            QStart = new int[batch],
            QLength = Enumerable.Repeat(maxSeqlenQ, batch).ToArray(),
            KStart = new int[batch],
            KLength = Enumerable.Repeat(maxSeqlenK, batch).ToArray(),
            TotalQ = totalQ,
            TotalK = totalK,
            MaxSeqlenQ = maxSeqlenQ,
            MaxSeqlenK = maxSeqlenK,
        };
        Options(options, shape);
        return shape;
    }

    /// <summary>Backward's extra tensors: dOut and output shaped like q, the log-sum-exp like forward returns it.</summary>
    public static void Backward(ProblemShape shape, TensorArg q, TensorArg dOut, TensorArg output, TensorArg logSumExp)
    {
        SameLengths(q, dOut, dOut.Name, mustMatch: q.Name);
        SameLengths(q, output, output.Name, mustMatch: q.Name);
        LastDimContiguous(dOut);
        LastDimContiguous(output);
        nint[] expected = shape.IsVarlen ? [shape.HeadsQ, shape.TotalQ] : [shape.Batch, shape.HeadsQ, shape.MaxSeqlenQ];
        if (!logSumExp.Lengths.AsSpan().SequenceEqual(expected))
            throw Fail(logSumExp.Name, $"must have shape ({string.Join(", ", expected)}) as forward returned it; got {logSumExp.ShapeText}.");
        if (logSumExp.Strides[^1] != 1 && expected[^1] > 1 && !IsEmpty(logSumExp))
            throw Fail(logSumExp.Name, "its last dimension must be contiguous (stride 1).");
    }

    public static void ElementType(Type elementType, string name)
    {
        if (elementType != typeof(float) && elementType != typeof(Half) && elementType != typeof(BFloat16))
            throw Fail(name, $"element type {elementType.Name} is not supported; use float, System.Half or FlashAttn.BFloat16.");
    }

    internal static void Options(AttentionOptions options, ProblemShape shape)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (!(options.DropoutProbability >= 0f && options.DropoutProbability < 1f))
            throw Fail("options.DropoutProbability", $"must be in [0, 1); got {options.DropoutProbability}.");
        if (options.SoftmaxScale is { } scale && !(float.IsFinite(scale) && scale > 0f))
            throw Fail("options.SoftmaxScale", $"must be positive and finite; got {scale}. Leave it null for 1/sqrt(headdim).");
        if (!(float.IsFinite(options.Softcap) && options.Softcap >= 0f))
            throw Fail("options.Softcap", $"must be 0 (off) or a positive finite cap; got {options.Softcap}.");
        if (options.Softcap > 0f && options.DropoutProbability > 0f)
            throw Fail("options.Softcap", "cannot be combined with dropout (flash-attn rejects softcap with dropout too); set Softcap = 0 or DropoutProbability = 0.");
        if (options.WindowLeft < -1)
            throw Fail("options.WindowLeft", $"must be -1 (unlimited) or >= 0; got {options.WindowLeft}.");
        if (options.WindowRight < -1)
            throw Fail("options.WindowRight", $"must be -1 (unlimited) or >= 0; got {options.WindowRight}.");
        if (options.AlibiSlopes is { } slopes)
        {
            bool perHead = slopes.Rank == 1 && slopes.Lengths[0] == shape.HeadsQ;
            bool perBatchHead = slopes.Rank == 2 && slopes.Lengths[0] == shape.Batch && slopes.Lengths[1] == shape.HeadsQ;
            if (!perHead && !perBatchHead)
                throw Fail("options.AlibiSlopes", $"must have shape ({shape.HeadsQ}) or ({shape.Batch}, {shape.HeadsQ}) (heads_q or batch x heads_q); got ({string.Join(", ", slopes.Lengths.ToArray())}).");
            if (!slopes.IsDense)
                throw Fail("options.AlibiSlopes", "must be dense; copy it first.");
        }
    }

    private static void HeadsAndDims(TensorArg q, TensorArg k, TensorArg v, int headAxis)
    {
        int dim = headAxis + 1;
        foreach (var t in new[] { q, k, v }) LastDimContiguous(t);
        int headDim = q.Length(dim);
        if (headDim < 1 || headDim > MaxHeadDim)
            throw Fail(q.Name, $"head dim {headDim} is not supported; flash attention takes head dims 1..{MaxHeadDim}.");
        if (k.Length(dim) != headDim)
            throw Fail(k.Name, $"head dim {k.Length(dim)} does not match q's head dim {headDim}.");
        if (v.Length(dim) != headDim)
            throw Fail(v.Name, $"head dim {v.Length(dim)} does not match q's head dim {headDim}.");
        int headsQ = q.Length(headAxis), headsKv = k.Length(headAxis);
        if (headsKv == 0 || headsQ % headsKv != 0)
            throw Fail(k.Name, $"heads_kv = {headsKv} must divide heads_q = {headsQ} (MQA/GQA groups query heads over key/value heads).");
    }

    private static (int[] Start, int[] Length) Offsets(ReadOnlySpan<int> cu, int total, int maxSeqlen, string name, string maxName, string tensor)
    {
        if (cu.Length < 1)
            throw Fail(name, "must hold batch + 1 cumulative offsets starting at 0.");
        if (cu[0] != 0)
            throw Fail(name, $"must start at 0; got {cu[0]}.");
        int batch = cu.Length - 1;
        var start = new int[batch];
        var length = new int[batch];
        for (int b = 0; b < batch; b++)
        {
            int len = cu[b + 1] - cu[b];
            if (len < 0)
                throw Fail(name, $"must be non-decreasing; entry {b + 1} ({cu[b + 1]}) is below entry {b} ({cu[b]}).");
            if (len > maxSeqlen)
                throw Fail(maxName, $"is {maxSeqlen} but sequence {b} has {len} tokens; pass the longest sequence length.");
            start[b] = cu[b];
            length[b] = len;
        }
        if (cu[batch] != total)
            throw Fail(name, $"ends at {cu[batch]} but {tensor} holds {total} tokens; the last offset must equal the token count.");
        if (maxSeqlen < 0)
            throw Fail(maxName, $"must be >= 0; got {maxSeqlen}.");
        return (start, length);
    }

    internal static void Rank(TensorArg t, int rank, string layout)
    {
        if (t.Rank != rank)
            throw Fail(t.Name, $"must have rank {rank}, {layout}; got shape {t.ShapeText}.");
    }

    internal static void SameLengths(TensorArg expected, TensorArg actual, string name, string? mustMatch = null)
    {
        if (!expected.Lengths.AsSpan().SequenceEqual(actual.Lengths))
            throw Fail(name, $"has shape {actual.ShapeText} but must match {mustMatch ?? expected.Name}'s shape {expected.ShapeText}.");
    }

    /// <summary>System.Numerics.Tensors gives every stride of an empty tensor the value 0; there is nothing to lay out.</summary>
    private static bool IsEmpty(TensorArg t) => t.Lengths.Contains(0);

    internal static void LastDimContiguous(TensorArg t)
    {
        if (t.Lengths[^1] > 1 && t.Strides[^1] != 1 && !IsEmpty(t))
            throw Fail(t.Name, $"the last dimension (headdim) must be contiguous (stride 1); got stride {t.Strides[^1]}. Copy it to a dense tensor first.");
    }

    internal static ArgumentException Fail(string name, string message) => new(message, name);
}
