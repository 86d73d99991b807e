using FlashAttn.Cuda;
using FlashAttn.Distributed;
using FlashAttn.Tests.Cuda;

namespace FlashAttn.Tests;

/// <summary>
/// The NCCL driver layer of context-parallel attention (docs/RING.md): the environment NCCL must see, argument checks, and
/// whatever this machine has (NCCL loads and reports its version, or the failure lists where it was looked for and the
/// fix). A one-GPU clique runs where a GPU and NCCL are present.
/// </summary>
public sealed class NcclTests
{
    [Fact]
    public void NvlsIsDisabledInTheNativeEnvironmentThatNcclReads()
    {
        if (OperatingSystem.IsWindows()) Assert.Skip("NCCL runs on Linux only.");
        NcclEnvironment.Set(NcclEnvironment.NvlsVariable, "1");
        Assert.Equal("1", NcclEnvironment.GetNative(NcclEnvironment.NvlsVariable));
        NcclEnvironment.DisableNvls();
        Assert.Equal("0", NcclEnvironment.GetNative(NcclEnvironment.NvlsVariable));
        Assert.Equal("0", Environment.GetEnvironmentVariable(NcclEnvironment.NvlsVariable));
    }

    [Theory]
    [InlineData(new int[0], "at least one")]
    [InlineData(new[] { 0, 0 }, "distinct")]
    [InlineData(new[] { -1 }, "non-negative")]
    public void BadDeviceListsAreRejectedBeforeNcclIsLoaded(int[] devices, string message)
    {
        var error = Assert.Throws<ArgumentException>(() => NcclClique.Create(devices));
        Assert.Equal("devices", error.ParamName);
        Assert.Contains(message, error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void NcclLoadsOrSaysWhereItLookedAndHowToFixIt()
    {
        try
        {
            int version = NcclClique.LibraryVersion();
            Assert.InRange(version, 20000, 99999);   // NCCL 2.x: major * 10000 + minor * 100 + patch
        }
        catch (CudaUnavailableException e)
        {
            Assert.Contains("libnccl.so.2", e.Message, StringComparison.Ordinal);
            Assert.Contains("FLASHATTN_NCCL_LIBRARY", e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    [Trait("Category", "Cuda")]
    public void OneGpuCliqueHasOneRankOnThatDevice()
    {
        GpuRequirement.SkipIfUnavailable();
        try
        {
            NcclClique.LibraryVersion();
        }
        catch (CudaUnavailableException e)
        {
            Assert.Skip("NCCL is not installed here: " + e.Message.Split('\n')[0]);
        }
        using var clique = NcclClique.Create([0]);
        Assert.Equal(1, clique.Size);
        Assert.Equal([0], clique.Devices);
        Assert.Equal("0", NcclEnvironment.GetNative(NcclEnvironment.NvlsVariable));
    }
}
