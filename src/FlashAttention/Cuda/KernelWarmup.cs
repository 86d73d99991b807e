using System.Diagnostics;

namespace FlashAttn.Cuda;

/// <summary>Compiles (or loads from the disk cache) kernel variants ahead of first use.</summary>
public static class KernelWarmup
{
    /// <summary>One compiled variant: its name, registers per thread, spilled bytes, and the time it took.</summary>
    public sealed record Variant(string Name, int Registers, int LocalBytes, double Milliseconds);

    private static readonly int[] Buckets = [64, 128, 192, 256];
    private static readonly bool[] Flags = [false, true];

    /// <summary>
    /// Compiles in parallel. The default set is the forward (with the narrow-window tiling) and backward kernels of every
    /// head-dim bucket in fp16 and bf16 without options, plus the head-copy kernel. <paramref name="everyVariant"/> adds
    /// every compile-time combination the library can launch: dropout or softcap, and ALiBi, in the forward; those and
    /// deterministic dQ in the backward; softcap and ALiBi in the KV-cache decode kernel, with its combine and append kernels.
    /// </summary>
    public static IReadOnlyList<Variant> Run(CudaDevice device, bool everyVariant = false)
    {
        var jobs = Jobs(everyVariant, device.Architecture).DistinctBy(j => (j.File, j.Kernel, j.Name)).ToList();
        var results = new Variant[jobs.Count];
        Parallel.For(0, jobs.Count, i =>
        {
            device.MakeCurrent();
            var clock = Stopwatch.StartNew();
            var kernel = KernelLibrary.Get(device, jobs[i].File, jobs[i].Kernel, jobs[i].Name, jobs[i].Defines);
            results[i] = new Variant(jobs[i].Name, kernel.Registers, kernel.LocalBytes, clock.Elapsed.TotalMilliseconds);
        });
        return results;
    }

    private static IEnumerable<(string File, string Kernel, string Name, IReadOnlyList<string> Defines)> Jobs(bool everyVariant, string architecture)
    {
        yield return ("copy_heads.cu", "copy_heads_kernel", "copy_heads", []);
        // The Hopper forward on sm_90 GPUs: always with every variant, otherwise when it is switched on.
        if (ForwardVariant.HopperCovers(architecture, 128, false) && (everyVariant || ForwardVariant.UseHopper))
            foreach (int bucket in Buckets)
                foreach (bool bf16 in Flags)
                    foreach (bool softcap in everyVariant ? Flags : [false])
                        foreach (bool alibi in everyVariant ? Flags : [false])
                            foreach (bool narrow in everyVariant ? Flags : [false])   // 64-row tiling for narrow windows at head dim 64
                            {
                                var hopper = ForwardVariant.ForHopper(bucket, bf16, softcap, alibi, narrow);
                                yield return (hopper.SourceFile, hopper.Kernel, hopper.Name, hopper.CompilerDefines);
                            }
        // The Hopper backward on sm_90 GPUs: always with every variant, otherwise when it is switched on.
        if (BackwardVariant.HopperCovers(architecture, 128, false, false) && (everyVariant || BackwardVariant.UseHopper))
            foreach (int bucket in new[] { 64, 128 })
                foreach (bool bf16 in Flags)
                    foreach (bool deterministic in everyVariant ? Flags : [false])
                        foreach (bool softcap in everyVariant ? Flags : [false])
                            foreach (bool alibi in everyVariant ? Flags : [false])
                            {
                                var hopper = BackwardVariant.ForHopper(bucket, bf16, deterministic, softcap, alibi);
                                yield return (hopper.SourceFile, BackwardVariant.MainKernel, hopper.Name, hopper.CompilerDefines);
                            }
        bool[] options = everyVariant ? Flags : [false];
        foreach (int bucket in Buckets)
            foreach (bool bf16 in Flags)
                foreach (bool dropout in options)
                    foreach (bool softcap in options)
                        foreach (bool alibi in options)
                        {
                            if (dropout && softcap) continue;   // rejected by validation, as in flash-attn: never launched
                            foreach (bool narrow in Flags)   // the narrow-window tiling exists at head dim 64 only; Distinct drops repeats
                            {
                                var forward = ForwardVariant.For(bucket, bf16, dropout, softcap, alibi, narrowWindow: narrow);
                                yield return (forward.SourceFile, forward.Kernel, forward.Name, forward.CompilerDefines);
                            }
                            foreach (bool deterministic in options)
                                foreach (bool narrow in Flags)   // 64-key blocks for narrow windows at head dim 64 only
                                {
                                    var backward = BackwardVariant.For(bucket, bf16, deterministic, dropout, softcap, alibi, narrowWindow: narrow);
                                    yield return (backward.SourceFile, BackwardVariant.MainKernel, backward.Name, backward.CompilerDefines);
                                }
                        }
        if (!everyVariant) yield break;
        foreach (int bucket in new[] { 64, 128, 256 })
            foreach (bool bf16 in Flags)
                foreach (bool softcap in Flags)
                    foreach (bool alibi in Flags)
                    {
                        var decode = DecodeVariant.For(bucket, bf16, softcap, alibi);
                        yield return ("flash_decode.cu", DecodeVariant.KernelName, decode.Name, decode.CompilerDefines);
                    }
        foreach (bool bf16 in Flags)
        {
            string type = bf16 ? "bf16" : "fp16";
            IReadOnlyList<string> defines = [$"-DFA_BF16={(bf16 ? 1 : 0)}"];
            yield return ("decode_combine.cu", "decode_combine_kernel", "decode_combine_" + type, defines);
            yield return ("kvcache_append.cu", "kvcache_append_kernel", "kvcache_append_" + type, defines);
        }
    }
}
