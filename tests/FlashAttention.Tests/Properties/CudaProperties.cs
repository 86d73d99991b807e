using FlashAttn.Cuda;
using FlashAttn.Tests.Cuda;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Properties;

/// <summary>
/// The CPU properties' generator on the CUDA path: fp16 and bf16, head dims 1-256 (the library pads non-multiples of 8),
/// lengths 0-300, every option, q/k/v/dO as strided or packed views into device buffers whose gaps hold NaN, outputs into
/// NaN-poisoned (strided) device tensors; O, LSE and the gradients against the float64 reference with the tolerance rule.
/// Each property runs one case at a time until its budget is spent, then shrinks a failure on the GPU.
/// <para>Environment: <c>FA_PROP_GPU_SECONDS</c> (default 30 per property) and <c>FA_PROP_GPU_ITER</c> (default 2000), whichever
/// ends first; <c>FA_PROP_SEED</c>, <c>FA_PROP_REPLAY</c>, <c>FA_PROP_SHRINK_SECONDS</c> as for the CPU properties
/// (<see cref="PropertySettings"/>). Skipped without a usable GPU.</para>
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaProperties
{
    [Fact]
    public void ForwardMatchesTheFloat64Reference()
    {
        GpuRequirement.SkipIfUnavailable();
        PropertyRunner.CheckForBudget("cuda forward vs reference", AttentionCaseGen.Cases(CaseProfile.CudaForward),
            c => CaseDispatch.Run(c, Unsupported, Forward<Half>, Forward<BFloat16>), c => c.ToString());
    }

    [Fact]
    public void GradientsMatchTheFloat64Reference()
    {
        GpuRequirement.SkipIfUnavailable();
        PropertyRunner.CheckForBudget("cuda backward vs reference", AttentionCaseGen.Cases(CaseProfile.CudaBackward),
            c => CaseDispatch.Run(c, Unsupported, Backward<Half>, Backward<BFloat16>), c => c.ToString());
    }

    private static void Unsupported(AttentionCase c) => throw new InvalidOperationException($"The CUDA profile generated fp32: {c}");

    private static void Forward<T>(AttentionCase c) where T : unmanaged
    {
        var inputs = Inputs<T>.Create(c.Problem, c.Random());
        var host = CaseOperands<T>.Create(c, inputs);
        AttentionCheck.Forward(c.Problem, c.ToOptions(), inputs: inputs, run: (_, options) => ForwardOnGpu(c, host, options));
    }

    private static void Backward<T>(AttentionCase c) where T : unmanaged
    {
        var inputs = Inputs<T>.Create(c.Problem, c.Random());
        var host = CaseOperands<T>.Create(c, inputs);
        AttentionCheck.Backward(c.Problem, c.ToOptions(), inputs,
            run: (_, options) => ForwardOnGpu(c, host, options),
            runBackward: (_, options, forward) => BackwardOnGpu(c, host, options, forward));
    }

    /// <summary>ForwardInto a NaN-filled output laid out like the case's q (strided when the case is padded).</summary>
    private static AttentionResult<T> ForwardOnGpu<T>(AttentionCase c, CaseOperands<T> host, AttentionOptions options) where T : unmanaged
    {
        using var device = new DeviceViews<T>();
        var output = device.Of(CaseOperands<T>.OutputLike(c));
        using var lse = CudaTensor<float>.Allocate(c.Problem.LseLengths);
        lse.Fill(0xFF);
        var state = FlashAttention.ForwardInto(device.Of(host.Q), device.Of(host.K), device.Of(host.V), output, lse, options);
        return new AttentionResult<T>(output.ToHost(), lse.ToHost(), state, null);
    }

    /// <summary>BackwardInto NaN-poisoned gradients, reading dO, q, k, v and the forward's output through the case's layout.</summary>
    private static AttentionGradients<T> BackwardOnGpu<T>(AttentionCase c, CaseOperands<T> host, AttentionOptions options, AttentionResult<T> forward)
        where T : unmanaged
    {
        var p = c.Problem;
        using var device = new DeviceViews<T>();
        var output = device.Of(CaseOperands<T>.LaidOutLikeOutput(c, CpuRuns.Flatten(forward.Output)));
        var lse = device.Dense(forward.LogSumExp);
        using var dq = CudaTensor<T>.Allocate(p.QLengths);
        using var dk = CudaTensor<T>.Allocate(p.KvLengths);
        using var dv = CudaTensor<T>.Allocate(p.KvLengths);
        dq.Fill(0xFF);
        dk.Fill(0xFF);
        dv.Fill(0xFF);
        FlashAttention.BackwardInto(device.Of(host.DOut), device.Of(host.Q), device.Of(host.K), device.Of(host.V), output, lse, dq, dk, dv, options,
            forward.DropoutState);
        return new AttentionGradients<T>(dq.ToHost(), dk.ToHost(), dv.ToHost());
    }
}
