using CsCheck;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Properties;

/// <summary>
/// Property: softcap combined with dropout, the one option combination the generator never produces, is rejected on every
/// problem with an ArgumentException naming options.Softcap, by Forward, ForwardInto (which then leaves the caller's output
/// untouched) and Backward alike.
/// <para>Runs 100 cases from a fixed seed. Environment: see <see cref="PropertySettings"/>.</para>
/// </summary>
public sealed class CpuValidationProperties
{
    private static CancellationToken Ct => TestContext.Current.CancellationToken;

    [Fact]
    public void SoftcapWithDropoutIsRejectedBeforeAnyWork() =>
        PropertyRunner.Check("cpu softcap+dropout rejected",
            Gen.Select(AttentionCaseGen.Cases(CaseProfile.CpuForward), Gen.Float[0.5f, 30f], Gen.Float[0.01f, 0.9f], Gen.ULong),
            t => CaseDispatch.Run(t.Item1, c => Check<float>(c, t.Item2, t.Item3, t.Item4), c => Check<Half>(c, t.Item2, t.Item3, t.Item4),
                c => Check<BFloat16>(c, t.Item2, t.Item3, t.Item4)),
            t => System.FormattableString.Invariant($"{t.Item1} then softcap={t.Item2} dropout={t.Item3} dropout seed={t.Item4}"), iterations: 100);

    private static void Check<T>(AttentionCase c, float softcap, float dropout, ulong seed) where T : unmanaged
    {
        var p = c.Problem;
        var inputs = Inputs<T>.Create(p, c.Random());
        var operands = CaseOperands<T>.Create(c, inputs);
        var options = c.ToOptions() with { Softcap = softcap, DropoutProbability = dropout, DropoutState = new DropoutState(seed, 0) };
        void Rejected(Action call, string what)
        {
            var error = Assert.ThrowsAny<ArgumentException>(call);
            Assert.True(error.ParamName == "options.Softcap", $"{what}: ParamName {error.ParamName}, expected options.Softcap. {error.Message}");
        }

        Rejected(() => CpuRuns.Forward(operands, options), "Forward");
        var output = CaseOperands<T>.OutputLike(c);
        var before = (T[])output.Buffer.Clone();
        var lse = Tensor.Create(new float[p.Batch * p.HeadsQ * p.SeqlenQ], p.LseLengths);
        Rejected(() => FlashAttention.ForwardInto(operands.Q.ReadOnly, operands.K.ReadOnly, operands.V.ReadOnly, output.Writable, lse, options, Ct), "ForwardInto");
        CpuRuns.AssertBitwise<T>("output after a rejected ForwardInto", output.Buffer, before, CpuRuns.Context(c));
        var o = Tensor.Create(new T[p.QCount], p.QLengths);
        Rejected(() => FlashAttention.Backward(operands.DOut.ReadOnly, operands.Q.ReadOnly, operands.K.ReadOnly, operands.V.ReadOnly, o, lse, options,
            cancellationToken: Ct), "Backward");
    }
}
