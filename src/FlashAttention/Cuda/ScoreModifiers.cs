using FlashAttn.Cuda.Interop;

namespace FlashAttn.Cuda;

/// <summary>
/// The kernel-side form of softcap and ALiBi (Kernels/fa_score_mods.cuh). The kernels keep raw scores and fold one
/// "effective scale" into exp2: the softmax scale, or the cap when softcap is on (logit = cap * tanh(s * scale / cap)).
/// ALiBi slopes are divided by that scale in the kernel, and uploaded here as one fp32 slope per (batch, head).
/// </summary>
internal readonly record struct ScoreModifiers(float EffectiveScale, float SoftcapPre, float AlibiFactor, nint AlibiSlopes, long AlibiBatchStride)
{
    public bool Softcap => SoftcapPre > 0f;

    public bool Alibi => AlibiSlopes != 0;

    /// <summary>Resolves the modifiers; uploads the slopes on <paramref name="stream"/> into memory owned by <paramref name="owner"/>.</summary>
    public static unsafe ScoreModifiers Prepare(AttentionSettings settings, CudaStream stream, List<DeviceMemory> owner)
    {
        float effective = settings.Softcap > 0f ? settings.Softcap : settings.Scale;
        nint slopes = 0;
        if (settings.AlibiSlopes is { Length: > 0 } host)
        {
            var memory = DeviceMemory.Allocate((long)host.Length * sizeof(float));
            owner.Add(memory);
            // Ordered on the launch stream; a pageable source is staged before the call returns, so `host` may go.
            fixed (float* source = host)
                CudaException.ThrowIfFailed(CudaDriver.cuMemcpyHtoDAsync_v2(memory.Address, source, (nuint)(host.Length * sizeof(float)), stream.Handle));
            slopes = memory.Pointer;
        }
        return new ScoreModifiers(effective, settings.Softcap > 0f ? settings.Scale / settings.Softcap : 0f, 1f / effective, slopes, settings.HeadsQ);
    }
}
