using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using FlashAttn.Cpu;
using FlashAttn.Validation;

namespace FlashAttn;

/// <summary>
/// FlashAttention-2: exact attention, tiled and fused, with memory linear in sequence length.
/// Every entry point validates its arguments first (nothing is written on rejection), then runs on the
/// execution path of its tensors. The names follow .NET style; each method's docs name the flash-attn
/// function it corresponds to.
/// </summary>
public static unsafe partial class FlashAttention
{
    private static AttentionResult<T> RunForward<T>(ProblemShape shape, AttentionOptions options, Operand<T> q, Operand<T> k, Operand<T> v,
        nint[] outputLengths, CancellationToken ct) where T : unmanaged
    {
        DropoutState? dropoutState = options.DropoutProbability > 0f ? options.DropoutState ?? DropoutState.Next() : null;
        var settings = AttentionSettings.Resolve(options, shape, dropoutState);
        var output = Tensor.CreateFromShape<T>(outputLengths, pinned: true);
        var lse = Tensor.CreateFromShape<float>(LseLengths(shape), pinned: true);
        Tensor<float>? probabilities = options.ReturnProbabilities
            ? Tensor.CreateFromShape<float>([shape.Batch, shape.HeadsQ, shape.MaxSeqlenQ, shape.MaxSeqlenK], pinned: true)
            : null;
        CpuAttention.Forward(shape, settings, q, k, v, Operand<T>.Of(Pin(output), Describe(output, "output")),
            LseOperand.Of(Pin(lse), Describe(lse, "logSumExp")), probabilities is null ? null : Pin(probabilities), ct);
        return new AttentionResult<T>(output, lse, dropoutState, probabilities);
    }

    private static void RunBackward<T>(ProblemShape shape, AttentionOptions options, DropoutState? dropoutState,
        Operand<T> dOut, Operand<T> q, Operand<T> k, Operand<T> v, Operand<T> output, LseOperand lse,
        Operand<T> dq, Operand<T> dk, Operand<T> dv, CancellationToken ct) where T : unmanaged
    {
        DropoutState? state = null;
        if (options.DropoutProbability > 0f)
        {
            state = dropoutState ?? options.DropoutState
                ?? throw new ArgumentException("Dropout is on, so backward needs the Philox state forward used: pass the forward result's DropoutState.", nameof(dropoutState));
        }
        var settings = AttentionSettings.Resolve(options, shape, state);
        CpuAttention.Backward(shape, settings, dOut, q, k, v, output, lse, dq, dk, dv, ct);
    }

    private static nint[] LseLengths(ProblemShape shape) =>
        shape.IsVarlen ? [shape.HeadsQ, shape.TotalQ] : [shape.Batch, shape.HeadsQ, shape.MaxSeqlenQ];

    private static TensorArg Describe<T>(Tensor<T> tensor, string name) => new(name, tensor.Lengths.ToArray(), tensor.Strides.ToArray());

    /// <summary>Address of a tensor created with pinned: true (it never moves).</summary>
    private static T* Pin<T>(Tensor<T> tensor) where T : unmanaged => (T*)Unsafe.AsPointer(ref tensor.GetPinnableReference());

    private static TensorArg Packed(TensorArg packed, int rank, int count, string layout)
    {
        if (packed.Rank != rank || packed.Lengths[rank - 3] != count)
            throw new ArgumentException($"must have shape {layout}; got {packed.ShapeText}.", packed.Name);
        return packed;
    }
}
