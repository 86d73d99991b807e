using System.Diagnostics;
using FlashAttn.Cuda;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// CUDA tests call <see cref="SkipIfUnavailable"/> first: on a machine without a usable GPU (no driver, no device,
/// no NVRTC, a GPU older than sm_80) the test is reported as skipped with the reason, instead of failing.
/// </summary>
internal static class GpuRequirement
{
    public static CudaDevice SkipIfUnavailable()
    {
        if (CudaDevice.TryGetDefault(out CudaDevice? device, out string reason))
            return device;
        Assert.Skip("No usable CUDA GPU: " + reason);
        throw new UnreachableException();
    }
}

/// <summary>A fresh folder under the temp path, deleted on dispose.</summary>
internal sealed class TempDirectory : IDisposable
{
    public TempDirectory()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "flashattn-test-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path);
    }

    public string Path { get; }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
