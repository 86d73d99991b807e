using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Properties;

/// <summary>
/// Properties of the CPU forward that need no reference, so they run on more and larger cases: two runs give the same bits;
/// <see cref="FlashAttention.ForwardInto{T}"/> into a caller-owned (strided, NaN-poisoned) output gives the same bits as
/// Forward and reports the same dropout state; dense copies of strided or packed operands give the same bits (the layout
/// is read, never reflected in the arithmetic); and the packed APIs on packed buffers give the same bits as the views.
/// <para>Runs 200 cases from a fixed seed. Environment: <c>FA_PROP_SEED</c>, <c>FA_PROP_ITER</c>, <c>FA_PROP_REPLAY</c>,
/// <c>FA_PROP_SHRINK_SECONDS</c>; see <see cref="PropertySettings"/>.</para>
/// </summary>
public sealed class CpuDeterminismProperties
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public void ForwardIsBitwiseReproducibleAcrossRunsLayoutsAndApis() =>
        PropertyRunner.Check("cpu forward determinism", AttentionCaseGen.Cases(CaseProfile.CpuForward),
            c => CaseDispatch.Run(c, Check<float>, Check<Half>, Check<BFloat16>), c => c.ToString(), iterations: 200);

    private static void Check<T>(AttentionCase c) where T : unmanaged
    {
        var p = c.Problem;
        var inputs = Inputs<T>.Create(p, c.Random());
        var operands = CaseOperands<T>.Create(c, inputs);
        var options = c.ToOptions();
        string context = CpuRuns.Context(c);

        var first = CpuRuns.Forward(operands, options);
        var o = CpuRuns.Flatten(first.Output);
        var lse = CpuRuns.Flatten(first.LogSumExp);
        Assert.Equal(c.Options.DropoutState, first.DropoutState);
        void Same(string what, AttentionResult<T> other)
        {
            CpuRuns.AssertBitwise<T>($"O ({what})", CpuRuns.Flatten(other.Output), o, context);
            CpuRuns.AssertBitwise<float>($"LSE ({what})", CpuRuns.Flatten(other.LogSumExp), lse, context);
        }

        Same("second run", CpuRuns.Forward(operands, options));

        var output = CaseOperands<T>.OutputLike(c);
        var lseInto = Tensor.Create(Enumerable.Repeat(float.NaN, p.Batch * p.HeadsQ * p.SeqlenQ).ToArray(), p.LseLengths);
        var state = FlashAttention.ForwardInto(operands.Q.ReadOnly, operands.K.ReadOnly, operands.V.ReadOnly, output.Writable, lseInto, options, Ct);
        Assert.Equal(first.DropoutState, state);
        var oInto = new T[p.QCount];
        output.ReadOnly.FlattenTo(oInto);
        CpuRuns.AssertBitwise<T>("O (ForwardInto)", oInto, o, context);
        CpuRuns.AssertBitwise<float>("LSE (ForwardInto)", CpuRuns.Flatten(lseInto), lse, context);

        if (c.Layout.Kind != LayoutKind.Dense)
            Same("dense copies of the operands", FlashAttention.Forward<T>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, Ct));
        if (operands.Packed is { } packed)
            Same("packed API", c.Layout.Kind == LayoutKind.PackedQkv
                ? FlashAttention.ForwardQkvPacked(packed.ReadOnly, options, Ct)
                : FlashAttention.ForwardKvPacked(operands.Q.ReadOnly, packed.ReadOnly, options, Ct));
    }
}
