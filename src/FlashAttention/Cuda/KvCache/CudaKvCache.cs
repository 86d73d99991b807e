using FlashAttn.Validation;

namespace FlashAttn.Cuda;

/// <summary>Runs flash_attn_with_kvcache on the GPU: append + rotary, split-KV decode, combine.</summary>
internal static class CudaKvCache
{
    public static void Run<T>(KvCacheShape shape, AttentionOptions options, KvCacheOptions cacheOptions, KvCacheTensors<T> tensors, CudaStream? stream)
        where T : unmanaged => throw new NotImplementedException("KV-cache decoding on CUDA is being built (issue 6).");
}
