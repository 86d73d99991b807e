using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Properties;

/// <summary>
/// A strided view into a host buffer: element (b, s, h, c) of the view is Buffer[Start + b*S0 + s*S1 + h*S2 + c*S3].
/// Strides are stored as System.Numerics.Tensors accepts them: 0 for dimensions of length 1 (never stepped along anyway)
/// and 0 everywhere when the view is empty.
/// </summary>
internal sealed record HostView<T>
{
    public HostView(T[] buffer, int start, nint[] lengths, nint[] strides)
    {
        Buffer = buffer;
        Start = start;
        Lengths = lengths;
        bool empty = lengths.Contains(0);
        Strides = [.. strides.Select((stride, i) => empty || lengths[i] == 1 ? 0 : stride)];
    }

    public T[] Buffer { get; }
    public int Start { get; }
    public nint[] Lengths { get; }
    public nint[] Strides { get; }

    public ReadOnlyTensorSpan<T> ReadOnly => new(Buffer, Start, Lengths, Strides);
    public TensorSpan<T> Writable => new(Buffer, Start, Lengths, Strides);
}

/// <summary>
/// q, k, v and dO of a case laid out as its <see cref="LayoutPlan"/> says, holding exactly the values of the dense
/// <see cref="Inputs{T}"/> (so the reference, which reads the dense arrays, applies unchanged). Packed layouts also expose
/// the 5-D packed tensor for the packed APIs.
/// </summary>
internal sealed class CaseOperands<T> where T : unmanaged
{
    public required HostView<T> Q { get; init; }
    public required HostView<T> K { get; init; }
    public required HostView<T> V { get; init; }
    public required HostView<T> DOut { get; init; }

    /// <summary>(batch, seqlen, 3 or 2, heads, headdim) over the same buffer as the views, for packed layouts.</summary>
    public HostView<T>? Packed { get; init; }

    public static CaseOperands<T> Create(AttentionCase c, Inputs<T> inputs)
    {
        var p = c.Problem;
        var plan = c.Layout;
        bool empty = p.Batch == 0 || p.SeqlenQ == 0 || p.SeqlenK == 0; // empty tensors cannot be built with non-zero strides
        if (empty || plan.Kind == LayoutKind.Dense)
            return new CaseOperands<T>
            {
                Q = Dense(inputs.Q, p.QLengths), K = Dense(inputs.K, p.KvLengths), V = Dense(inputs.V, p.KvLengths), DOut = Dense(inputs.DOut, p.QLengths),
            };
        switch (plan.Kind)
        {
            case LayoutKind.Padded:
                return new CaseOperands<T>
                {
                    Q = Padded(inputs.Q, p.QLengths, plan),
                    K = Padded(inputs.K, p.KvLengths, plan with { HeadsMajor = !plan.HeadsMajor, Start = plan.Start + 1 }),
                    V = Padded(inputs.V, p.KvLengths, plan with { HeadPad = plan.RowPad, RowPad = plan.HeadPad }),
                    DOut = Padded(inputs.DOut, p.QLengths, plan with { Start = plan.Start + 2 }),
                };
            case LayoutKind.PackedKv:
            {
                var (packed, views) = Pack([inputs.K, inputs.V], p.KvLengths, plan);
                return new CaseOperands<T> { Q = Dense(inputs.Q, p.QLengths), K = views[0], V = views[1], DOut = Dense(inputs.DOut, p.QLengths), Packed = packed };
            }
            default:
            {
                if (p.SeqlenQ != p.SeqlenK || p.HeadsQ != p.HeadsKv)
                    throw new InvalidOperationException($"qkv-packed needs seqlen_q = seqlen_k and heads_q = heads_kv: {p}");
                var (packed, views) = Pack([inputs.Q, inputs.K, inputs.V], p.QLengths, plan);
                return new CaseOperands<T> { Q = views[0], K = views[1], V = views[2], DOut = Dense(inputs.DOut, p.QLengths), Packed = packed };
            }
        }
    }

    /// <summary>A view shaped like q for outputs (ForwardInto's O), laid out like the case's q when it is padded.</summary>
    public static HostView<T> OutputLike(AttentionCase c)
    {
        var p = c.Problem;
        var fill = new T[p.QCount];
        Array.Fill(fill, Precision<T>.FromFloat(float.NaN));
        bool empty = p.Batch == 0 || p.SeqlenQ == 0 || p.SeqlenK == 0;
        return empty || c.Layout.Kind != LayoutKind.Padded
            ? Dense(fill, p.QLengths)
            : Padded(fill, p.QLengths, c.Layout with { HeadsMajor = !c.Layout.HeadsMajor, Start = c.Layout.Start + 3 });
    }

    /// <summary>A copy of <paramref name="dense"/> laid out like <see cref="OutputLike"/> (the output handed to backward).</summary>
    public static HostView<T> LaidOutLikeOutput(AttentionCase c, T[] dense)
    {
        var view = OutputLike(c);
        Tensor.Create(dense, c.Problem.QLengths).AsReadOnlyTensorSpan().CopyTo(view.Writable);
        return view;
    }

    public static HostView<T> Dense(T[] values, nint[] lengths) => new(values, 0, lengths, RowMajor(lengths));

    /// <summary>(b, s, h, d) values at padded strides in a NaN-filled buffer, rows-major or heads-major.</summary>
    private static HostView<T> Padded(T[] dense, nint[] lengths, LayoutPlan plan)
    {
        nint b = lengths[0], s = lengths[1], h = lengths[2], d = lengths[3];
        nint[] strides;
        if (plan.HeadsMajor)
        {
            nint row = d + plan.HeadPad, head = s * row + plan.RowPad;
            strides = [h * head, row, head, 1];
        }
        else
        {
            nint head = d + plan.HeadPad, row = h * head + plan.RowPad;
            strides = [s * row, row, head, 1];
        }
        var view = new HostView<T>(Poisoned(plan.Start + Extent(lengths, strides) + 3), plan.Start, lengths, strides);
        Tensor.Create(dense, lengths).AsReadOnlyTensorSpan().CopyTo(view.Writable);
        return view;
    }

    /// <summary>Packs 2 or 3 same-shaped (b, s, h, d) arrays as (b, s, parts, h, d + pad) rows padded by RowPad; returns the 5-D view and one view per part.</summary>
    private static (HostView<T> Packed, HostView<T>[] Parts) Pack(T[][] parts, nint[] lengths, LayoutPlan plan)
    {
        nint b = lengths[0], s = lengths[1], h = lengths[2], d = lengths[3];
        nint head = d + plan.HeadPad, part = h * head, row = parts.Length * part + plan.RowPad;
        nint[] packedLengths = [b, s, parts.Length, h, d];
        nint[] packedStrides = [s * row, row, part, head, 1];
        var buffer = Poisoned(plan.Start + Extent(packedLengths, packedStrides) + 3);
        var packed = new HostView<T>(buffer, plan.Start, packedLengths, packedStrides);
        var views = new HostView<T>[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            views[i] = new HostView<T>(buffer, plan.Start + (int)(i * part), lengths, [s * row, row, head, 1]);
            Tensor.Create(parts[i], lengths).AsReadOnlyTensorSpan().CopyTo(views[i].Writable);
        }
        return (packed, views);
    }

    private static T[] Poisoned(nint length)
    {
        var buffer = new T[length];
        Array.Fill(buffer, Precision<T>.FromFloat(float.NaN));
        return buffer;
    }

    /// <summary>One past the last element a view of these lengths and strides touches.</summary>
    private static int Extent(nint[] lengths, nint[] strides)
    {
        nint last = 0;
        for (int i = 0; i < lengths.Length; i++) last += (lengths[i] - 1) * strides[i];
        return (int)last + 1;
    }

    private static nint[] RowMajor(nint[] lengths)
    {
        var strides = new nint[lengths.Length];
        nint stride = 1;
        for (int i = lengths.Length - 1; i >= 0; i--)
        {
            strides[i] = stride;
            stride *= lengths[i];
        }
        return strides;
    }
}
