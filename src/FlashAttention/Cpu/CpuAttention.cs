using FlashAttn.Validation;

namespace FlashAttn.Cpu;

/// <summary>The CPU execution path: validated shapes and pinned operands in, outputs written in place.</summary>
internal static unsafe class CpuAttention
{
    public static void Forward<T>(ProblemShape shape, AttentionSettings settings, Operand<T> q, Operand<T> k, Operand<T> v,
        Operand<T> output, LseOperand lse, float* probabilities, CancellationToken ct) where T : unmanaged
    {
        if (shape.Batch == 0 || shape.HeadsQ == 0) return;
        CpuForward.Run(shape, settings, q, k, v, output, lse, ct);
        if (probabilities != null) CpuProbabilities.Compute(shape, settings, q, k, lse, probabilities, ct);
    }

    public static void Backward<T>(ProblemShape shape, AttentionSettings settings, Operand<T> dOut, Operand<T> q, Operand<T> k, Operand<T> v,
        Operand<T> output, LseOperand lse, Operand<T> dq, Operand<T> dk, Operand<T> dv, CancellationToken ct) where T : unmanaged
    {
        if (shape.Batch == 0 || shape.HeadsQ == 0) return;
        CpuBackward.Run(shape, settings, dOut, q, k, v, output, lse, dq, dk, dv, ct);
    }
}
