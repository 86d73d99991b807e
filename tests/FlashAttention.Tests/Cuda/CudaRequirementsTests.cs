using FlashAttn.Cuda;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The version rules CudaDevice applies when it opens a GPU (CudaRequirements), on made-up numbers: they need no GPU and
/// run everywhere. Missing libraries are LibraryResolverTests' business; these are libraries that load but are too old.
/// </summary>
[Trait("Category", "Cuda")]
public sealed class CudaRequirementsTests
{
    private const string Gpu = "Test GPU (device 0)";

    [Theory]
    [InlineData(12020, 12, 8, 8, 0)]    // pip NVRTC 12.8 on a CUDA 12.2 driver: minor version compatibility
    [InlineData(13000, 12, 4, 9, 0)]    // an older NVRTC on a newer driver
    [InlineData(13000, 13, 1, 9, 0)]    // a newer minor NVRTC than the driver
    [InlineData(12000, 11, 8, 8, 9)]    // the oldest NVRTC we take, on Ada
    [InlineData(12080, 12, 8, 10, 0)]   // Blackwell with the first NVRTC that knows it
    [InlineData(12090, 12, 9, 12, 0)]
    public void WorkingCombinationsPass(int driver, int nvrtcMajor, int nvrtcMinor, int ccMajor, int ccMinor) =>
        Assert.Null(CudaRequirements.Check(driver, (nvrtcMajor, nvrtcMinor), (ccMajor, ccMinor), Gpu));

    [Theory]
    [InlineData(7, 5)]
    [InlineData(7, 0)]
    [InlineData(6, 1)]
    public void GpusOlderThanAmpereAreRejectedFirst(int ccMajor, int ccMinor)
    {
        // Even with an NVRTC and a driver that are too old as well: the GPU is what cannot be fixed by an install.
        string? reason = CudaRequirements.Check(10000, (10, 0), (ccMajor, ccMinor), Gpu);
        Assert.NotNull(reason);
        Assert.StartsWith(Gpu, reason);
        Assert.Contains($"compute capability {ccMajor}.{ccMinor}", reason);
        Assert.Contains("sm_80 or newer", reason);
        Assert.Contains("Fix:", reason);
        Assert.Equal(reason, CudaRequirements.CheckComputeCapability((ccMajor, ccMinor), Gpu));
        Assert.Null(CudaRequirements.CheckComputeCapability((8, 0), Gpu));
    }

    [Theory]
    [InlineData(11, 7)]
    [InlineData(11, 2)]
    [InlineData(10, 2)]
    public void NvrtcOlderThan11Point8IsRejected(int nvrtcMajor, int nvrtcMinor)
    {
        string? reason = CudaRequirements.Check(13000, (nvrtcMajor, nvrtcMinor), (8, 0), Gpu);
        Assert.NotNull(reason);
        Assert.StartsWith($"NVRTC {nvrtcMajor}.{nvrtcMinor} is too old", reason);
        Assert.Contains("11.8 or newer", reason);
        Assert.Contains("FLASHATTN_NVRTC_LIBRARY", reason);
        Assert.Contains("Fix:", reason);
    }

    [Theory]
    [InlineData(9, 0, 11, 8, "sm_90a", "12.0")]    // Hopper's kernels use sm_90a, which NVRTC 11.8 does not know
    [InlineData(10, 0, 12, 6, "sm_100", "12.8")]
    [InlineData(12, 0, 12, 4, "sm_120", "12.8")]
    [InlineData(10, 3, 12, 8, "sm_103", "12.9")]
    public void NvrtcTooOldForTheGpusArchitectureIsRejected(int ccMajor, int ccMinor, int nvrtcMajor, int nvrtcMinor, string arch, string needed)
    {
        string? reason = CudaRequirements.Check(13000, (nvrtcMajor, nvrtcMinor), (ccMajor, ccMinor), Gpu);
        Assert.NotNull(reason);
        Assert.StartsWith(Gpu, reason);
        Assert.Contains($"{arch}, which NVRTC {nvrtcMajor}.{nvrtcMinor} cannot compile", reason);
        Assert.Contains($"needs NVRTC {needed} or newer", reason);
        Assert.Contains("Fix:", reason);
        Assert.Null(CudaRequirements.Check(13000, CudaRequirements.FirstNvrtcFor((ccMajor, ccMinor)), (ccMajor, ccMinor), Gpu));
    }

    [Theory]
    [InlineData(12040, 13, 0, "12.4", "R580")]    // the resolver prefers libnvrtc.so.13: a CUDA 12 driver cannot load its CUBINs
    [InlineData(12090, 13, 1, "12.9", "R580")]
    [InlineData(11080, 12, 0, "11.8", "R525")]
    public void DriverOfAnOlderMajorVersionThanNvrtcIsRejected(int driver, int nvrtcMajor, int nvrtcMinor, string driverCuda, string branch)
    {
        string? reason = CudaRequirements.Check(driver, (nvrtcMajor, nvrtcMinor), (8, 0), Gpu);
        Assert.NotNull(reason);
        Assert.StartsWith($"The NVIDIA driver is too old for NVRTC {nvrtcMajor}.{nvrtcMinor}", reason);
        Assert.Contains($"supports CUDA up to {driverCuda}", reason);
        Assert.Contains($"driver for CUDA {nvrtcMajor}.0 or newer", reason);
        Assert.Contains(branch, reason);
        Assert.Contains($"use an NVRTC of CUDA {driver / 1000}.x", reason);
    }

    [Fact]
    public void FirstNvrtcForEachArchitectureIsAtLeastTheFloor()
    {
        foreach (var cc in new[] { (8, 0), (8, 6), (8, 7), (8, 9), (9, 0), (10, 0), (10, 1), (10, 3), (11, 0), (12, 0), (12, 1), (13, 0) })
            Assert.True(CudaRequirements.FirstNvrtcFor(cc).CompareTo(CudaRequirements.MinimumNvrtc) >= 0, $"{cc}");
    }
}
