using System.Diagnostics;

namespace FlashAttn.Cuda;

/// <summary>Compiles (or loads from the disk cache) the common kernel variants ahead of first use.</summary>
public static class KernelWarmup
{
    /// <summary>One compiled variant: its name, registers per thread, spilled bytes, and the time it took.</summary>
    public sealed record Variant(string Name, int Registers, int LocalBytes, double Milliseconds);

    /// <summary>Forward (with the narrow-window tiling) and backward kernels for every head-dim bucket in fp16 and bf16, plus the head-copy kernel, compiled in parallel.</summary>
    public static IReadOnlyList<Variant> Run(CudaDevice device)
    {
        var jobs = new List<(string File, string Kernel, string Name, IReadOnlyList<string> Defines)>
        {
            ("copy_heads.cu", "copy_heads_kernel", "copy_heads", []),
        };
        foreach (int bucket in new[] { 64, 128, 192, 256 })
            foreach (bool bf16 in new[] { false, true })
            {
                foreach (bool narrow in new[] { false, true })
                {
                    var variant = ForwardVariant.For(bucket, bf16, narrowWindow: narrow);
                    if (!narrow || variant != ForwardVariant.For(bucket, bf16))   // the narrow-window tiling exists at head dim 64 only
                        jobs.Add(("flash_fwd.cu", ForwardVariant.KernelName, variant.Name, variant.CompilerDefines));
                }
            }
        foreach (int bucket in new[] { 64, 128, 192, 256 })
            foreach (bool bf16 in new[] { false, true })
            {
                var variant = BackwardVariant.For(bucket, bf16, deterministic: false);
                jobs.Add((variant.SourceFile, BackwardVariant.MainKernel, variant.Name, variant.CompilerDefines));
            }
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
}
