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

    /// <summary>Device bytes the slopes need (256-aligned); 0 without ALiBi.</summary>
    public static long SlopeBytes(AttentionSettings settings) =>
        settings.AlibiSlopes is { Length: > 0 } slopes ? ((long)slopes.Length * sizeof(float) + 255) / 256 * 256 : 0;

    /// <summary>Resolves the modifiers and queues the slopes' upload to <paramref name="slopeMemory"/> (<see cref="SlopeBytes"/>
    /// bytes of the caller's stream-ordered workspace) on <paramref name="stream"/>: no allocation, no synchronisation.</summary>
    public static unsafe ScoreModifiers Prepare(AttentionSettings settings, CudaStream stream, nint slopeMemory)
    {
        float effective = settings.Softcap > 0f ? settings.Softcap : settings.Scale;
        nint slopes = 0;
        if (settings.AlibiSlopes is { Length: > 0 } host)
        {
            // A pageable source is staged before the call returns, so `host` may go; the copy is ordered on the stream.
            fixed (float* source = host)
                CudaException.ThrowIfFailed(CudaDriver.cuMemcpyHtoDAsync_v2((ulong)slopeMemory, source, (nuint)(host.Length * sizeof(float)), stream.Handle));
            slopes = slopeMemory;
        }
        return new ScoreModifiers(effective, settings.Softcap > 0f ? settings.Scale / settings.Softcap : 0f, 1f / effective, slopes, settings.HeadsQ);
    }
}
