namespace FlashAttn.Cuda;

/// <summary>The device tensors of one KV-cache call, validated (absent ones are null).</summary>
internal sealed record KvCacheTensors<T>(CudaTensor<T> Q, CudaTensor<T> KCache, CudaTensor<T> VCache, CudaTensor<T>? KNew, CudaTensor<T>? VNew,
    CudaTensor<int>? CacheSeqlens, CudaTensor<int>? CacheBatchIndex, CudaTensor<int>? BlockTable, CudaTensor<T>? RotaryCos,
    CudaTensor<T>? RotarySin, CudaTensor<T> Output, CudaTensor<float>? LogSumExp) where T : unmanaged;
