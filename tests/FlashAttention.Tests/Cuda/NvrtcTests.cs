using FlashAttn.Cuda;
using static FlashAttn.Tests.Cuda.TestKernels;

namespace FlashAttn.Tests.Cuda;

/// <summary>NVRTC compilation and kernel launches, in both calling conventions.</summary>
[Trait("Category", "Cuda")]
public sealed class NvrtcTests
{
    [Fact]
    public void VectorAddCompilesLaunchesAndMatches()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var dir = new TempDirectory();
        using var cache = new ModuleCache(dir.Path);
        RunAndCheck(cache, device, scale: 1, n: 1000);
        RunAndCheck(cache, device, scale: 3, n: 4097);
    }

    [Fact]
    public unsafe void ScalarArgumentLaunchMatches()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var dir = new TempDirectory();
        using var cache = new ModuleCache(dir.Path);
        var kernel = cache.GetOrCompile(Source, "vadd", "vadd_scalar", [], device);
        const int n = 777;
        var random = new Random();
        float[] a = Enumerable.Range(0, n).Select(_ => (float)random.NextDouble() + 0.25f).ToArray();
        float[] b = Enumerable.Range(0, n).Select(_ => (float)random.NextDouble() - 2f).ToArray();
        using var da = CudaTensor<float>.FromHost(a);
        using var db = CudaTensor<float>.FromHost(b);
        using var dc = CudaTensor<float>.Allocate([n]);
        dc.Fill(0xFF);
        nint pa = da.DevicePointer, pb = db.DevicePointer, pc = dc.DevicePointer;
        int count = n;
        void** args = stackalloc void*[] { &pa, &pb, &pc, &count };
        kernel.Launch(args, ((n + 255) / 256, 1, 1), (256, 1, 1), 0, CudaStream.Legacy);
        float[] c = Flat(dc.ToHost());
        for (int i = 0; i < n; i++)
            Assert.Equal(a[i] + b[i], c[i]);
    }

    [Fact]
    public void KernelAttributesAreReadable()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var dir = new TempDirectory();
        using var cache = new ModuleCache(dir.Path);
        var kernel = cache.GetOrCompile(Source, "vadd_params", "vadd_attributes", [], device);
        Assert.InRange(kernel.Registers, 1, 255);
        Assert.Equal(0, kernel.LocalBytes);
        Assert.True(kernel.MaxThreadsPerBlock >= 128);
        Assert.Equal(CudaKernel.DefaultDynamicSharedLimit, kernel.MaxDynamicSharedMemory);
        kernel.SetMaxDynamicSharedMemory(1024); // below 48 KiB: nothing to do
        Assert.Equal(CudaKernel.DefaultDynamicSharedLimit, kernel.MaxDynamicSharedMemory);
        kernel.SetMaxDynamicSharedMemory(64 * 1024);
        Assert.Equal(64 * 1024, kernel.MaxDynamicSharedMemory);
        Assert.Throws<ArgumentOutOfRangeException>(() => kernel.SetMaxDynamicSharedMemory(device.MaxSharedMemoryPerBlockOptin + 1));
    }

    [Fact]
    public void ABrokenKernelThrowsNvrtcExceptionWithTheLog()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var dir = new TempDirectory();
        using var cache = new ModuleCache(dir.Path);
        var broken = new KernelSource("broken.cu",
            "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_identifier_42; }",
            new Dictionary<string, string>());
        var error = Assert.Throws<NvrtcException>(() => cache.GetOrCompile(broken, "broken", "broken_variant", ["-DMARKER=1"], device));
        Assert.Equal(NvrtcResult.Compilation, error.Result);
        Assert.Equal("broken_variant", error.VariantName);
        Assert.Contains("undefined_identifier_42", error.Log);
        Assert.Contains("-DMARKER=1", error.Options);
        Assert.Contains("-arch=" + device.Architecture, error.Options);
        Assert.Contains("broken_variant", error.Message);
        Assert.Contains("undefined_identifier_42", error.Message);
        Assert.Empty(Directory.GetFiles(dir.Path));

        // Failures are not remembered: the same request fails the same way again (and compiles again).
        Assert.Throws<NvrtcException>(() => cache.GetOrCompile(broken, "broken", "broken_variant", ["-DMARKER=1"], device));
        Assert.Equal(2, cache.Compilations);
    }

    [Fact]
    public void AnUnknownKernelNameIsReported()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var dir = new TempDirectory();
        using var cache = new ModuleCache(dir.Path);
        var error = Assert.Throws<InvalidOperationException>(() => cache.GetOrCompile(Source, "no_such_kernel", "vadd_missing", [], device));
        Assert.Contains("no_such_kernel", error.Message);
    }

    [Fact]
    public void CompilerReportsItsVersion()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        var (major, minor) = NvrtcCompiler.Version;
        Assert.InRange(major, 12, 99);
        Assert.InRange(minor, 0, 99);
        Assert.Equal((major, minor), device.NvrtcVersion);
    }
}
