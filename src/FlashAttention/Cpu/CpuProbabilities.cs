using System.Numerics.Tensors;
using FlashAttn.Validation;

namespace FlashAttn.Cpu;

/// <summary>
/// Materialises the attention probabilities for <see cref="AttentionOptions.ReturnProbabilities"/> (a testing
/// aid: O(seqlen^2) memory) as P = exp(logit - LSE) from forward's own LSE, so it shows exactly what forward
/// normalised by. Masked and padded entries are 0; entries dropped by dropout are negated (flash-attn's convention).
/// </summary>
internal static unsafe class CpuProbabilities
{
    public static void Compute<T>(ProblemShape shape, AttentionSettings settings, Operand<T> q, Operand<T> k, LseOperand lse,
        float* probabilities, CancellationToken ct) where T : unmanaged
    {
        int d = shape.HeadDim, maxQ = shape.MaxSeqlenQ, maxK = shape.MaxSeqlenK;
        Parallel.For(0, shape.Batch * shape.HeadsQ, new ParallelOptions { CancellationToken = ct }, index =>
        {
            int b = index / shape.HeadsQ, h = index % shape.HeadsQ, hk = h / shape.GroupSize;
            int seqlenQ = shape.QLength[b], seqlenK = shape.KLength[b];
            float* qRow = stackalloc float[d];
            float* kRow = stackalloc float[d];
            float* target = probabilities + (long)index * maxQ * maxK;
            new Span<float>(target, maxQ * maxK).Clear();
            for (int i = 0; i < seqlenQ; i++)
            {
                ct.ThrowIfCancellationRequested(); // per row: one task is a whole (sequence, head) of seqlen_q x seqlen_k scores
                Elements.ToFloat(q.At(b, shape.QStart[b] + i, h), qRow, d);
                float rowLse = *lse.At(b, h, shape.QStart[b] + i);
                for (int j = 0; j < seqlenK; j++)
                {
                    if (!settings.IsVisible(i, j, seqlenQ, seqlenK)) continue;
                    Elements.ToFloat(k.At(b, shape.KStart[b] + j, hk), kRow, d);
                    float score = TensorPrimitives.Dot(new ReadOnlySpan<float>(qRow, d), new ReadOnlySpan<float>(kRow, d));
                    float logit = settings.Softcap > 0f ? settings.Softcap * MathF.Tanh(score * settings.Scale / settings.Softcap) : score * settings.Scale;
                    logit -= settings.AlibiSlope(b, h) * Math.Abs(i + seqlenK - seqlenQ - j);
                    float p = MathF.Exp(logit - rowLse);
                    bool dropped = settings.Dropout.Enabled && !settings.Dropout.IsKept(b, h, i, j);
                    target[(long)i * maxK + j] = dropped ? -p : p;
                }
            }
        });
    }
}
