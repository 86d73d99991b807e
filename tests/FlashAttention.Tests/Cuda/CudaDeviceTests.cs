using FlashAttn.Cuda;
using static FlashAttn.Tests.Cuda.TestKernels;

namespace FlashAttn.Tests.Cuda;

/// <summary>The device, its contexts on other threads, streams and events.</summary>
[Trait("Category", "Cuda")]
public sealed class CudaDeviceTests
{
    [Fact]
    public void DevicePropertiesAreSane()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        Assert.Same(device, CudaDevice.Default);
        Assert.False(string.IsNullOrWhiteSpace(device.Name));
        Assert.True(device.ComputeCapability.Major >= 8);
        Assert.Equal(CudaDevice.ArchitectureFor(device.ComputeCapability.Major, device.ComputeCapability.Minor), device.Architecture);
        Assert.True(device.MultiprocessorCount > 0);
        Assert.True(device.TotalMemoryBytes > 1L << 30);
        Assert.True(device.MaxSharedMemoryPerBlockOptin >= 99 * 1024);
        Assert.True(device.DriverVersion >= 12000);
        var (free, total) = device.GetMemoryInfo();
        Assert.InRange(free, 1, total);
        Assert.Contains(device.Architecture, device.ToString());
    }

    [Fact]
    public async Task WorkOnAnotherThreadUsesTheSameContext()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        float[] data = [1.5f, -2.25f, 3.125f];
        using var tensor = CudaTensor<float>.FromHost(data);
        float[] fromOtherThread = await Task.Run(() =>
        {
            using var copy = CudaTensor<float>.View(tensor.DevicePointer, [3]);
            return Flat(copy.ToHost());
        });
        Assert.Equal(data, fromOtherThread);
        device.Synchronize();
    }

    [Fact]
    public void EventsTimeWorkOnAStream()
    {
        var device = GpuRequirement.SkipIfUnavailable();
        using var stream = CudaStream.Create();
        Assert.True(stream.IsOwned);
        Assert.NotEqual(0, stream.Handle);
        using var start = CudaEvent.Create();
        using var end = CudaEvent.Create();
        using var dir = new TempDirectory();
        using var cache = new ModuleCache(dir.Path);
        start.Record(stream);
        RunAndCheck(cache, device, scale: 1, n: 1 << 20, stream: stream);
        end.Record(stream);
        end.Synchronize();
        stream.Synchronize();
        float ms = CudaEvent.ElapsedMilliseconds(start, end);
        Assert.InRange(ms, 0f, 60_000f);
    }

    [Fact]
    public void TheLegacyStreamIsSharedAndNeverDestroyed()
    {
        GpuRequirement.SkipIfUnavailable();
        Assert.True(CudaStream.Legacy.IsLegacy);
        Assert.Equal(0, CudaStream.Legacy.Handle);
        CudaStream.Legacy.Dispose();
        CudaStream.Legacy.Synchronize();
        Assert.Same(CudaStream.Legacy, CudaStream.FromHandle(0));
        using var stream = CudaStream.Create();
        using var borrowed = CudaStream.FromHandle(stream.Handle);
        Assert.False(borrowed.IsOwned);
        borrowed.Dispose();
        stream.Synchronize(); // still alive: the borrowed wrapper did not destroy it
    }
}
