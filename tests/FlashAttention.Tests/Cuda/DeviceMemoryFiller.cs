using FlashAttn.Cuda;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// Takes nearly all free device memory, in CudaTensor chunks of 1 GiB halved on each refusal down to 1 MiB, so that less
/// than <see cref="MinChunk"/> stays free, plus an optional headroom: <see cref="Fill"/> reserves the headroom first and
/// releases it once the rest is taken. Dispose frees every chunk; use it in a using block, so that a failing test cannot
/// leave the GPU full for the tests after it.
/// </summary>
internal sealed class DeviceMemoryFiller : IDisposable
{
    public const long MinChunk = 1L << 20;
    private const long MaxChunk = 1L << 30;
    private readonly List<CudaTensor<byte>> _chunks = [];

    private DeviceMemoryFiller()
    {
    }

    /// <summary>Bytes held.</summary>
    public long Bytes { get; private set; }

    public static DeviceMemoryFiller Fill(CudaDevice device, long headroom = 0)
    {
        var filler = new DeviceMemoryFiller();
        CudaTensor<byte>? reserve = null;
        try
        {
            if (headroom > 0)
                reserve = CudaTensor<byte>.Allocate([(nint)headroom], device);
            for (long chunk = MaxChunk; chunk >= MinChunk;)
            {
                try
                {
                    filler._chunks.Add(CudaTensor<byte>.Allocate([(nint)chunk], device));
                    filler.Bytes += chunk;
                }
                catch (CudaOutOfMemoryException)
                {
                    chunk /= 2;
                }
            }
        }
        catch
        {
            filler.Dispose();
            throw;
        }
        finally
        {
            reserve?.Dispose();
        }
        device.Synchronize();
        return filler;
    }

    public void Dispose()
    {
        foreach (var chunk in _chunks) chunk.Dispose();
        _chunks.Clear();
        Bytes = 0;
    }
}
