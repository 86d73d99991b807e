namespace FlashAttn.Tests.Infrastructure;

/// <summary>The element types under test, for theory data (generic test methods cannot be theories directly).</summary>
public enum Dtype
{
    Fp32,
    Fp16,
    Bf16,
}

internal static class DtypeDispatch
{
    public static void Forward(Dtype dtype, Problem problem, AttentionOptions? options = null, bool checkProbabilities = false)
    {
        switch (dtype)
        {
            case Dtype.Fp32: AttentionCheck.Forward<float>(problem, options, checkProbabilities); break;
            case Dtype.Fp16: AttentionCheck.Forward<Half>(problem, options, checkProbabilities); break;
            default: AttentionCheck.Forward<BFloat16>(problem, options, checkProbabilities); break;
        }
    }

    public static void Backward(Dtype dtype, Problem problem, AttentionOptions? options = null)
    {
        switch (dtype)
        {
            case Dtype.Fp32: AttentionCheck.Backward<float>(problem, options); break;
            case Dtype.Fp16: AttentionCheck.Backward<Half>(problem, options); break;
            default: AttentionCheck.Backward<BFloat16>(problem, options); break;
        }
    }
}
