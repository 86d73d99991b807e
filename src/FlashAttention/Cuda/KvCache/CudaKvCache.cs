using FlashAttn.Validation;

namespace FlashAttn.Cuda;

/// <summary>
/// Runs flash_attn_with_kvcache on the GPU as up to three launches on the caller's stream, with no synchronisation:
/// append (k_new / v_new into the cache, rotary on them and on a copy of q), split-KV attention, and the combine of the
/// splits. Scratch memory (rotated q, partials, ALiBi slopes) comes from the stream's pooled workspace.
/// </summary>
internal static class CudaKvCache
{
    private const float Log2E = 1.4426950408889634f;
    private const int AppendThreads = 256;
    private const int MaxGridDimension = 65535;

    public static void Run<T>(KvCacheShape shape, AttentionOptions options, KvCacheOptions cacheOptions, KvCacheTensors<T> x, CudaStream? stream)
        where T : unmanaged
    {
        CheckLayout(shape, x);
        if (shape.Batch == 0) return;
        var device = x.Q.Device;
        var launchStream = stream ?? CudaStream.Legacy;
        bool bf16 = typeof(T) == typeof(BFloat16);
        var settings = AttentionSettings.Resolve(options, shape.Attention, null);
        var variant = DecodeVariant.For(shape.HeadDim, bf16, settings.Softcap > 0f, settings.AlibiSlopes is not null);

        int tiles = (int)DecodeVariant.Tiles(shape);   // CheckLayout keeps it within the grid
        int splits = DecodeSplits.Choose(cacheOptions.NumSplits, shape.Batch * tiles, shape.Capacity, device.MultiprocessorCount);
        bool rotateQ = shape.RotaryDim > 0;
        long rows = (long)shape.Batch * shape.HeadsQ * shape.SeqlenQ;

        // Workspace: ALiBi slopes | rotated q | fp32 partial O | partial LSE, each 256-aligned.
        long slopeBytes = ScoreModifiers.SlopeBytes(settings);
        long qBytes = rotateQ ? Align((long)shape.Batch * shape.SeqlenQ * shape.HeadsQ * shape.HeadDim * 2) : 0;
        long partialBytes = splits > 1 ? Align(splits * rows * shape.HeadDim * sizeof(float)) : 0;
        long partialLseBytes = splits > 1 ? Align(splits * rows * sizeof(float)) : 0;
        using var lease = WorkspacePool.Rent(device, launchStream, slopeBytes + qBytes + partialBytes + partialLseBytes);
        nint qRotated = lease.Pointer + (nint)slopeBytes;
        nint oPartial = qRotated + (nint)qBytes, lsePartial = oPartial + (nint)partialBytes;
        var modifiers = ScoreModifiers.Prepare(settings, launchStream, lease.Pointer);
        var cache = Layout(shape, x);

        if (x.KNew is not null)
            Append(device, shape, settings, cacheOptions, x, cache, rotateQ ? qRotated : 0, bf16, launchStream);
        if (shape.SeqlenQ == 0 || shape.HeadsQ == 0) return;   // the append still happens, as on the CPU path

        var q = rotateQ
            ? new DeviceOperand(qRotated, (long)shape.SeqlenQ * shape.HeadsQ * shape.HeadDim, (long)shape.HeadsQ * shape.HeadDim, shape.HeadDim)
            : DeviceOperand.Of(x.Q);
        var k = DeviceOperand.Of(x.KCache);
        var v = DeviceOperand.Of(x.VCache);
        var o = DeviceOperand.Of(x.Output);
        var lseStrides = x.LogSumExp?.Strides.ToArray() ?? [0, 0, 0];
        var decode = new FlashDecodeParams
        {
            Q = q.Pointer, KCache = k.Pointer, VCache = v.Pointer, O = o.Pointer, Lse = x.LogSumExp?.DevicePointer ?? 0,
            OPartial = splits > 1 ? oPartial : 0, LsePartial = splits > 1 ? lsePartial : 0,
            AlibiSlopes = modifiers.AlibiSlopes, AlibiBatchStride = modifiers.AlibiBatchStride,
            QBatchStride = q.StrideBatch, QRowStride = q.StrideRow, QHeadStride = q.StrideHead,
            KBatchStride = k.StrideBatch, KRowStride = k.StrideRow, KHeadStride = k.StrideHead,
            VBatchStride = v.StrideBatch, VRowStride = v.StrideRow, VHeadStride = v.StrideHead,
            OBatchStride = o.StrideBatch, ORowStride = o.StrideRow, OHeadStride = o.StrideHead,
            LseBatchStride = lseStrides[0], LseHeadStride = lseStrides[1],
            Cache = cache,
            Batch = shape.Batch, HeadsQ = shape.HeadsQ, HeadsKv = shape.HeadsKv, HeadDim = shape.HeadDim, SeqlenQ = shape.SeqlenQ,
            WindowLeft = settings.WindowLeft, WindowRight = settings.WindowRight, NumSplits = splits,
            ScaleLog2 = modifiers.EffectiveScale * Log2E, Scale = modifiers.EffectiveScale, SoftcapPre = modifiers.SoftcapPre,
            AlibiFactor = modifiers.AlibiFactor,
        };
        var kernel = KernelLibrary.Get(device, "flash_decode.cu", DecodeVariant.KernelName, variant.Name, variant.CompilerDefines);
        kernel.SetMaxDynamicSharedMemory(variant.SharedMemoryBytes);
        kernel.Launch(decode, ((uint)splits, (uint)tiles, (uint)shape.Batch), (DecodeVariant.Threads, 1, 1), variant.SharedMemoryBytes, launchStream);

        if (splits > 1)
        {
            var combine = new DecodeCombineParams
            {
                OPartial = oPartial, LsePartial = lsePartial, O = o.Pointer, Lse = decode.Lse,
                OBatchStride = o.StrideBatch, ORowStride = o.StrideRow, OHeadStride = o.StrideHead,
                LseBatchStride = lseStrides[0], LseHeadStride = lseStrides[1],
                Batch = shape.Batch, HeadsQ = shape.HeadsQ, SeqlenQ = shape.SeqlenQ, HeadDim = shape.HeadDim, NumSplits = splits,
            };
            var combiner = KernelLibrary.Get(device, "decode_combine.cu", "decode_combine_kernel", $"decode_combine_{(bf16 ? "bf16" : "fp16")}",
                [$"-DFA_BF16={(bf16 ? 1 : 0)}"]);
            // One block per output row, one thread per column (at least a warp, which reduces the split weights).
            uint threads = (uint)Math.Clamp((shape.HeadDim + 31) / 32 * 32, 32, 256);
            combiner.Launch(combine, ((uint)rows, 1, 1), (threads, 1, 1), 0, launchStream);
        }
    }

    private static void Append<T>(CudaDevice device, KvCacheShape shape, AttentionSettings settings, KvCacheOptions cacheOptions,
        KvCacheTensors<T> x, CacheLayoutParams cache, nint qRotated, bool bf16, CudaStream stream) where T : unmanaged
    {
        var kNew = DeviceOperand.Of(x.KNew!);
        var vNew = DeviceOperand.Of(x.VNew!);
        var k = DeviceOperand.Of(x.KCache);
        var v = DeviceOperand.Of(x.VCache);
        var q = DeviceOperand.Of(x.Q);
        var parameters = new KvCacheAppendParams
        {
            KNew = kNew.Pointer, VNew = vNew.Pointer, KCache = k.Pointer, VCache = v.Pointer, Q = q.Pointer, QRotated = qRotated,
            RotaryCos = x.RotaryCos?.DevicePointer ?? 0, RotarySin = x.RotarySin?.DevicePointer ?? 0,
            KNewBatchStride = kNew.StrideBatch, KNewRowStride = kNew.StrideRow, KNewHeadStride = kNew.StrideHead,
            VNewBatchStride = vNew.StrideBatch, VNewRowStride = vNew.StrideRow, VNewHeadStride = vNew.StrideHead,
            KBatchStride = k.StrideBatch, KRowStride = k.StrideRow, KHeadStride = k.StrideHead,
            VBatchStride = v.StrideBatch, VRowStride = v.StrideRow, VHeadStride = v.StrideHead,
            QBatchStride = q.StrideBatch, QRowStride = q.StrideRow, QHeadStride = q.StrideHead,
            RotaryRowStride = x.RotaryCos?.Strides[0] ?? 0,
            Cache = cache,
            Batch = shape.Batch, SeqlenQ = shape.SeqlenQ, HeadsQ = shape.HeadsQ, HeadsKv = shape.HeadsKv, HeadDim = shape.HeadDim,
            RotaryDim = shape.RotaryDim, SeqlenRo = shape.RotaryPositions,
            Interleaved = cacheOptions.RotaryInterleaved ? 1 : 0,
            // flash-attn: q rows sit at consecutive positions when causal or windowed, all at the cache length otherwise.
            QPositionsAdvance = settings.HasMask ? 1 : 0,
        };
        long items = (long)shape.Batch * shape.SeqlenNew * shape.HeadsKv * shape.HeadDim
            + (qRotated != 0 ? (long)shape.Batch * shape.SeqlenQ * shape.HeadsQ * shape.HeadDim : 0);
        if (items == 0) return;
        var kernel = KernelLibrary.Get(device, "kvcache_append.cu", "kvcache_append_kernel", $"kvcache_append_{(bf16 ? "bf16" : "fp16")}",
            [$"-DFA_BF16={(bf16 ? 1 : 0)}"]);
        uint blocks = (uint)Math.Min((items + AppendThreads - 1) / AppendThreads, device.MultiprocessorCount * 16L);
        kernel.Launch(parameters, (blocks, 1, 1), (AppendThreads, 1, 1), 0, stream);
    }

    private static CacheLayoutParams Layout<T>(KvCacheShape shape, KvCacheTensors<T> x) where T : unmanaged => new()
    {
        CacheSeqlens = x.CacheSeqlens?.DevicePointer ?? 0,
        CacheBatchIndex = x.CacheBatchIndex?.DevicePointer ?? 0,
        BlockTable = x.BlockTable?.DevicePointer ?? 0,
        BlockTableBatchStride = x.BlockTable?.Strides[0] ?? 0,
        Capacity = shape.Capacity,
        CacheBatch = shape.CacheBatch,
        PageSize = shape.Paged ? shape.CacheRows : 0,
        SeqlenNew = shape.SeqlenNew,
    };

    /// <summary>The attention kernel streams q and the caches in 16-byte chunks; the other tensors are read or written by element.</summary>
    private static void CheckLayout<T>(KvCacheShape shape, KvCacheTensors<T> x) where T : unmanaged
    {
        if (shape.HeadDim % 8 != 0)
            throw new ArgumentException($"head dim {shape.HeadDim} must be a multiple of 8 for KV-cache attention on CUDA (the cache is read in " +
                "16-byte chunks and cannot be padded in place); pad the cache's head dim or use the CPU path.", nameof(x.Q).ToLowerInvariant());
        foreach (var (tensor, name) in new[] { (x.KCache, "kCache"), (x.VCache, "vCache") })
            if (!DeviceOperand.Of(tensor).IsChunkAligned)
                throw new ArgumentException("must be 16-byte aligned with every stride a multiple of 8 elements (the kernel reads it in 16-byte chunks).", name);
        // Grid y holds kv heads x 16-row tiles of (query, head-in-group) rows, grid z the batch: CUDA caps both at 65535.
        long tiles = DecodeVariant.Tiles(shape);
        if (tiles > MaxGridDimension)
            throw new ArgumentException($"seqlen_q x heads_q = {(long)shape.SeqlenQ * shape.HeadsQ} query rows is more than KV-cache attention on CUDA " +
                $"takes in one call ({MaxGridDimension} tiles of 16 rows); split the queries into chunks or use Forward for long prefills.", "q");
        if (shape.Batch > MaxGridDimension)
            throw new ArgumentException($"batch {shape.Batch} is more than KV-cache attention on CUDA takes in one call ({MaxGridDimension}); split the batch.", "q");
        if (shape.RotaryDim == 0 && !DeviceOperand.Of(x.Q).IsChunkAligned)
            throw new ArgumentException("must be 16-byte aligned with every stride a multiple of 8 elements; copy it to a dense tensor first.", "q");
    }

    private static long Align(long bytes) => (bytes + 255) / 256 * 256;
}
