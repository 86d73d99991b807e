using System.Numerics.Tensors;
using FlashAttn.Cuda;

namespace FlashAttn.Cli.Gpu;

/// <summary>
/// Device buffers for one <see cref="DecodeCase"/>, allocated once outside the timed calls: several independent (q, K cache,
/// V cache) sets that together exceed the L2 cache several times over (so each call reads its cache from HBM, as a decoding
/// step after other layers would), one output, the cache lengths (every sequence full), and for a paged cache one shuffled
/// block table.
/// </summary>
internal sealed class DecodeWorkload : IDisposable
{
    /// <summary>Random elements uploaded once and tiled over the caches (32 MiB of bf16).</summary>
    private const int PatternElements = 16 << 20;

    private readonly List<IDisposable> _owned = [];
    private readonly (CudaTensor<BFloat16> Q, CudaTensor<BFloat16> K, CudaTensor<BFloat16> V)[] _sets;
    private readonly CudaTensor<BFloat16> _output;
    private readonly CudaTensor<int> _cacheSeqlens;
    private readonly CudaTensor<int>? _blockTable;

    public DecodeWorkload(DecodeCase c, int sets, CudaDevice device, CudaStream stream, Random random)
    {
        try
        {
            nint[] qShape = [c.Batch, 1, DecodeCase.Heads, DecodeCase.HeadDim];
            int blocks = c.Batch * c.BlocksPerSequence;
            nint[] cacheShape = c.Paged
                ? [blocks, DecodeCase.PageSize, DecodeCase.HeadsKv, DecodeCase.HeadDim]
                : [c.Batch, c.CacheLength, DecodeCase.HeadsKv, DecodeCase.HeadDim];
            var pattern = Own(GpuWorkloads<BFloat16>.UploadUniform(device, random, [PatternElements]));
            CudaTensor<BFloat16> Cache()
            {
                bool headMajor = c.Layout == DecodeLayout.HeadMajor;
                nint[] storage = headMajor ? [c.Batch, DecodeCase.HeadsKv, c.CacheLength, DecodeCase.HeadDim] : cacheShape;
                var cache = Own(CudaTensor<BFloat16>.Allocate(storage, device));
                DeviceCopy.Tile(cache, pattern, stream);
                if (!headMajor) return cache;
                nint head = (nint)c.CacheLength * DecodeCase.HeadDim;
                return Own(CudaTensor<BFloat16>.View(cache.DevicePointer, cacheShape, [DecodeCase.HeadsKv * head, DecodeCase.HeadDim, head, 1]));
            }
            _sets = new (CudaTensor<BFloat16>, CudaTensor<BFloat16>, CudaTensor<BFloat16>)[sets];
            for (int i = 0; i < sets; i++)
                _sets[i] = (Own(GpuWorkloads<BFloat16>.UploadUniform(device, random, qShape)), Cache(), Cache());
            _output = Own(CudaTensor<BFloat16>.Allocate(qShape, device));
            _cacheSeqlens = Own(CudaTensor<int>.FromHost(Tensor.Create(Enumerable.Repeat(c.CacheLength, c.Batch).ToArray(), [c.Batch]), device));
            if (c.Paged)
            {
                // A shuffled table: a sequence's pages are scattered over the pool, as after a serving engine's allocations.
                int[] pages = [.. Enumerable.Range(0, blocks)];
                random.Shuffle(pages);
                _blockTable = Own(CudaTensor<int>.FromHost(Tensor.Create(pages, [c.Batch, c.BlocksPerSequence]), device));
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Buffer sets the calls cycle through.</summary>
    public int Sets => _sets.Length;

    /// <summary>Call i: decode one step on set i mod <see cref="Sets"/>, into the shared output, without the log-sum-exp.</summary>
    public Action<int> Launch(CudaStream stream, int splits = 0)
    {
        var options = AttentionOptions.Default;
        var cacheOptions = new KvCacheOptions { NumSplits = splits };
        return i =>
        {
            var (q, k, v) = _sets[i % _sets.Length];
            FlashAttention.ForwardWithKvCacheInto(q, k, v, _output, logSumExp: null, cacheSeqlens: _cacheSeqlens, blockTable: _blockTable,
                options: options, cacheOptions: cacheOptions, stream: stream);
        };
    }

    private TTensor Own<TTensor>(TTensor tensor) where TTensor : IDisposable
    {
        _owned.Add(tensor);
        return tensor;
    }

    public void Dispose()
    {
        for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
        _owned.Clear();
    }
}
