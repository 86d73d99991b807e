using FlashAttn.Validation;

namespace FlashAttn.Cpu;

/// <summary>
/// Where key position j of sequence b lives in a KV cache, as (index along dim 0, index along dim 1): a contiguous cache
/// holds it at (cache_batch_idx[b] or b, j); a paged cache at (block_table[b, j / page_size], j % page_size). The values
/// have been range-checked (<see cref="KvCacheValidator.HostValues"/>) for every position a sequence uses.
/// </summary>
internal sealed class CacheSlots
{
    private readonly int[]? _batchIndex, _blockTable;
    private readonly int _pageSize, _maxBlocks;

    /// <param name="shape">The validated geometry.</param>
    /// <param name="batchIndex">cache_batch_idx, or null for row b.</param>
    /// <param name="blockTable">The dense (batch, max_blocks) block table of a paged cache, or null.</param>
    public CacheSlots(KvCacheShape shape, int[]? batchIndex, int[]? blockTable)
    {
        _batchIndex = batchIndex;
        _blockTable = shape.Paged ? blockTable : null;
        _pageSize = shape.CacheRows;
        _maxBlocks = shape.MaxBlocksPerSequence;
    }

    /// <summary>True when position j of sequence b is row (b, j) of the cache, so the cache can be read in place.</summary>
    public bool IsIdentity => _batchIndex is null && _blockTable is null;

    public (int Index0, int Index1) Locate(int batch, int position) =>
        _blockTable is { } table ? (table[batch * _maxBlocks + position / _pageSize], position % _pageSize)
        : (_batchIndex is { } index ? index[batch] : batch, position);
}
