using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Properties;

/// <summary>The CPU path on a case's operands, laid out as the case says.</summary>
internal static class CpuRuns
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    public static AttentionResult<T> Forward<T>(CaseOperands<T> operands, AttentionOptions options) where T : unmanaged =>
        FlashAttention.Forward(operands.Q.ReadOnly, operands.K.ReadOnly, operands.V.ReadOnly, options, Ct);

    /// <summary>Backward reading dO, q, k, v through the case's layout and the forward's output through <see cref="CaseOperands{T}.OutputLike"/>.</summary>
    public static AttentionGradients<T> Backward<T>(AttentionCase c, CaseOperands<T> operands, AttentionOptions options, AttentionResult<T> forward)
        where T : unmanaged
    {
        var output = CaseOperands<T>.LaidOutLikeOutput(c, Flatten(forward.Output));
        return FlashAttention.Backward(operands.DOut.ReadOnly, operands.Q.ReadOnly, operands.K.ReadOnly, operands.V.ReadOnly, output.ReadOnly,
            forward.LogSumExp, options, forward.DropoutState, Ct);
    }

    public static TElement[] Flatten<TElement>(Tensor<TElement> tensor)
    {
        var flat = new TElement[tensor.FlattenedLength];
        tensor.FlattenTo(flat);
        return flat;
    }

    /// <summary>Bitwise equality (NaN payloads and the sign of zero included), reporting the first difference.</summary>
    public static void AssertBitwise<TElement>(string what, ReadOnlySpan<TElement> actual, ReadOnlySpan<TElement> expected, string context)
        where TElement : unmanaged
    {
        Assert.True(actual.Length == expected.Length, $"{what}: {actual.Length} elements, expected {expected.Length}. {context}");
        var a = System.Runtime.InteropServices.MemoryMarshal.AsBytes(actual);
        var e = System.Runtime.InteropServices.MemoryMarshal.AsBytes(expected);
        int size = System.Runtime.CompilerServices.Unsafe.SizeOf<TElement>();
        for (int i = 0; i < actual.Length; i++)
            if (!a.Slice(i * size, size).SequenceEqual(e.Slice(i * size, size)))
                Assert.Fail($"{what}: element {i} differs bitwise: {actual[i]} vs {expected[i]}. {context}");
    }

    public static string Context(AttentionCase c) => $"[{c}]";
}
