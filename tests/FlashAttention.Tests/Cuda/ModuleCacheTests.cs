using FlashAttn.Cuda;
using static FlashAttn.Tests.Cuda.TestKernels;

namespace FlashAttn.Tests.Cuda;

/// <summary>The module cache on a GPU: memory hits, disk hits, damaged files, concurrency.</summary>
[Trait("Category", "Cuda")]
public sealed class ModuleCacheTests
{
    [Fact]
    public void SecondRequestIsAMemoryHitAndAFreshCacheHitsTheDisk()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var dir = new TempDirectory();
        using (var cache = new ModuleCache(dir.Path))
        {
            // The same variant and options RunAndCheck(scale: 1) asks for below.
            var first = cache.GetOrCompile(Source, "vadd_params", "vadd_scale1", ["-DSCALE=1"], device);
            var second = cache.GetOrCompile(Source, "vadd_params", "vadd_scale1", ["-DSCALE=1"], device);
            Assert.Same(first, second);
            Assert.Equal(1, cache.Compilations);
            Assert.Equal(1, cache.MemoryHits);
            Assert.Equal(0, cache.DiskHits);
            string file = Assert.Single(Directory.GetFiles(dir.Path));
            Assert.Equal(cache.CachePath(first.CacheKey), file);
            Assert.NotNull(CubinCacheFile.TryRead(file, out _));
        }

        using var fresh = new ModuleCache(dir.Path);
        RunAndCheck(fresh, device, scale: 1);
        Assert.Equal(0, fresh.Compilations);
        Assert.Equal(1, fresh.DiskHits);
    }

    [Fact]
    public void ATruncatedCacheFileIsDeletedAndRecompiled()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var dir = new TempDirectory();
        string file;
        using (var cache = new ModuleCache(dir.Path))
            file = cache.CachePath(cache.GetOrCompile(Source, "vadd_params", "vadd_scale2", ["-DSCALE=2"], device).CacheKey);
        byte[] bytes = File.ReadAllBytes(file);
        File.WriteAllBytes(file, bytes.AsSpan(0, bytes.Length / 2).ToArray());

        using var again = new ModuleCache(dir.Path);
        RunAndCheck(again, device, scale: 2);
        Assert.Equal(1, again.RejectedFiles);
        Assert.Equal(1, again.Compilations);
        Assert.Equal(0, again.DiskHits);
        Assert.NotNull(CubinCacheFile.TryRead(file, out string? problem));
        Assert.Null(problem);
    }

    [Fact]
    public void AnIntactFileTheDriverRefusesIsDeletedAndRecompiled()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var dir = new TempDirectory();
        string file;
        using (var cache = new ModuleCache(dir.Path))
            file = cache.CachePath(cache.GetOrCompile(Source, "vadd_params", "vadd_scale4", ["-DSCALE=4"], device).CacheKey);
        // A well-formed cache file whose payload is an ELF magic followed by zeros: no valid ELF class, so the driver refuses it.
        var junk = new byte[256];
        "\u007fELF"u8.CopyTo(junk);
        File.WriteAllBytes(file, CubinCacheFile.Encode(junk));

        using var again = new ModuleCache(dir.Path);
        RunAndCheck(again, device, scale: 4);
        Assert.Equal(1, again.RejectedFiles);
        Assert.Equal(1, again.Compilations);
        Assert.NotEqual(junk, CubinCacheFile.TryRead(file, out _));
    }

    [Fact]
    public void ConcurrentRequestsCompileOnce()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var dir = new TempDirectory();
        using var cache = new ModuleCache(dir.Path);
        var kernels = new CudaKernel[16];
        Parallel.For(0, kernels.Length, i => kernels[i] = cache.GetOrCompile(Source, "vadd_params", "vadd_concurrent", [], device));
        Assert.Equal(1, cache.Compilations);
        Assert.All(kernels, k => Assert.Equal(kernels[0].Function, k.Function));
    }

    [Fact]
    public void DifferentOptionsAreDifferentModules()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var dir = new TempDirectory();
        using var cache = new ModuleCache(dir.Path);
        RunAndCheck(cache, device, scale: 5);
        RunAndCheck(cache, device, scale: 6);
        Assert.Equal(2, cache.Compilations);
        Assert.Equal(2, Directory.GetFiles(dir.Path, "*.cubin").Length);
    }

    [Fact]
    public void KernelsOfADisposedCacheCannotLaunch()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var dir = new TempDirectory();
        var cache = new ModuleCache(dir.Path);
        var kernel = cache.GetOrCompile(Source, "vadd_params", "vadd_disposed", [], device);
        cache.Dispose();
        Assert.Throws<ObjectDisposedException>(() => kernel.Launch(new AddParams(), (1, 1, 1), (32, 1, 1), 0, CudaStream.Legacy));
        Assert.Throws<ObjectDisposedException>(() => cache.GetOrCompile(Source, "vadd_params", "vadd_disposed", [], device));
    }
}
