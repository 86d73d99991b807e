using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Properties;

/// <summary>
/// Property: on every generated problem (<see cref="AttentionCaseGen"/>: any batch, lengths, GQA/MQA, head dim 1-160, fp32/fp16/bf16,
/// causal, windows, softcap, ALiBi, dropout, scale, strided and packed layouts) the CPU forward's O and LSE
/// are within the tolerance rule of the float64 reference: max|impl - ref64| &lt;= 2 max|naive - ref64| + floor
/// (<see cref="Tolerance.AssertClose"/>). On a failure CsCheck shrinks the case and the message prints the smallest one.
/// P (ReturnProbabilities) is not checked: in fp32 with large logits the rule has no room for the LSE's rounding that P
/// inherits (see <see cref="CaseProfile"/>'s remarks).
/// <para>Runs 200 cases from a fixed seed, the same ones every run (about 5 s on 2 cores). Environment: <c>FA_PROP_SEED</c>
/// (a number, or <c>random</c>), <c>FA_PROP_ITER</c> (cases), <c>FA_PROP_REPLAY</c> (one CsCheck seed from a failure message),
/// <c>FA_PROP_SHRINK_SECONDS</c> (default 30); see <see cref="PropertySettings"/>.</para>
/// </summary>
public sealed class CpuForwardProperties
{
    [Fact]
    public void OutputAndLogSumExpMatchTheFloat64Reference() =>
        PropertyRunner.Check("cpu forward vs reference", AttentionCaseGen.Cases(CaseProfile.CpuForward),
            c => CaseDispatch.Run(c, Check<float>, Check<Half>, Check<BFloat16>), c => c.ToString(), iterations: 200);

    private static void Check<T>(AttentionCase c) where T : unmanaged
    {
        var inputs = Inputs<T>.Create(c.Problem, c.Random());
        var operands = CaseOperands<T>.Create(c, inputs);
        AttentionCheck.Forward(c.Problem, c.ToOptions(), inputs: inputs, run: (_, options) => CpuRuns.Forward(operands, options));
    }
}
