using FlashAttn.Cuda.Interop;
using FlashAttn.Validation;

namespace FlashAttn.Cuda;

/// <summary>
/// The unfused attention baseline ("native attention" in the FlashAttention paper; PyTorch's
/// <c>softmax(q @ k.transpose(-2, -1) * scale) @ v</c>): the whole score matrix is materialised in device memory.
/// Three steps on the caller's stream, nothing synchronised:
/// <list type="number">
/// <item>S = scale * Q K^T: cuBLAS strided-batched GEMM (fp32 accumulation) into a dense (batch, heads_q, seqlen_q,
/// seqlen_k) workspace in the input dtype, reading Q and K in place through their strides. The scale rides on the
/// GEMM's alpha (free, and, as in PyTorch's math path, which scales q and k before the matmul, the stored scores are the
/// scaled ones, further from fp16's overflow at 65504).</item>
/// <item>P = softmax(mask(S)) in place, one warp or block per row (Kernels/unfused_softmax.cu), also writing the
/// fp32 log-sum-exp (+inf and P = 0 for a row that sees no key).</item>
/// <item>O = P V: cuBLAS strided-batched GEMM written through the output's strides.</item>
/// </list>
/// The benchmark uses it as the "unfused" peer for speed and memory; it is not an execution path of the library.
/// </summary>
internal static class UnfusedAttention
{
    private const int ElementBytes = 2;

    /// <summary>Rows up to this many keys get one warp each; longer rows one 256-thread block.</summary>
    private const int WarpRowLimit = 1024;

    /// <summary>
    /// Runs the unfused forward and returns the bytes of device workspace it allocated (the score matrix:
    /// batch * heads_q * seqlen_q * seqlen_k * 2), freed before returning (cuMemFree waits for the work).
    /// </summary>
    /// <exception cref="NotSupportedException">Varlen shapes, dropout, softcap or ALiBi.</exception>
    /// <exception cref="CudaOutOfMemoryException">The score matrix (or cuBLAS's workspace) does not fit on the GPU:
    /// expected at long sequences, which is the point of the comparison.</exception>
    public static long Forward<T>(CudaDevice device, ProblemShape shape, AttentionSettings settings, DeviceOperand q, DeviceOperand k,
        DeviceOperand v, DeviceOperand output, DeviceOperand lse, CudaStream stream) where T : unmanaged
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(shape);
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(stream);
        bool bf16 = typeof(T) == typeof(BFloat16);
        if (!bf16 && typeof(T) != typeof(Half))
            throw new ArgumentException($"The unfused attention baseline takes System.Half or FlashAttn.BFloat16, not {typeof(T).Name}.", nameof(T));
        if (shape.IsVarlen)
            throw new NotSupportedException("The unfused attention baseline takes fixed-length batches only, not varlen (concatenated) sequences.");
        ThrowIfUnsupported(settings);

        int batch = shape.Batch, seqlenQ = shape.MaxSeqlenQ, seqlenK = shape.MaxSeqlenK, heads = shape.HeadsQ, dim = shape.HeadDim;
        if (batch == 0 || seqlenQ == 0 || heads == 0) return 0;
        var dtype = bf16 ? CudaDataType.R16BF : CudaDataType.R16F;
        var layout = new Layout(shape, q, k, v, output);

        device.MakeCurrent();
        long scoreBytes = (long)batch * heads * seqlenQ * seqlenK * ElementBytes;
        using var scores = DeviceMemory.Allocate(device, scoreBytes); // throws CudaOutOfMemoryException with the request and free memory
        if (seqlenK > 0)
            Scores(device, stream, layout, settings.Scale, scores.Pointer, dtype);
        Softmax(device, stream, shape, settings, scores.Pointer, lse, bf16);
        if (seqlenK > 0)
            Output(device, stream, layout, scores.Pointer, dtype);
        else
            HeadCopy.Copy(device, output, output, batch, seqlenQ, heads, 0, dim, stream); // no keys: O = 0
        return scoreBytes;
    }

    private static void ThrowIfUnsupported(AttentionSettings settings)
    {
        var features = new List<string>();
        if (settings.Dropout.Enabled) features.Add("dropout");
        if (settings.Softcap > 0f) features.Add("softcap");
        if (settings.AlibiSlopes is not null) features.Add("ALiBi");
        if (features.Count > 0)
            throw new NotSupportedException(
                $"The unfused attention baseline implements causal and sliding-window masks only; {string.Join(", ", features)} requested.");
    }

    /// <summary>S = scale * Q K^T per (batch, head). Row-major S (sq x sk) = Q (sq x d) K^T is column-major S^T (sk x sq)
    /// = K^T' Q' where the column-major views of row-major Q and K are Q' = Q^T (d x sq) and K' = K^T (d x sk): so
    /// op(A) = T on K, op(B) = N on Q, m = sk, n = sq, k = d.</summary>
    private static unsafe void Scores(CudaDevice device, CudaStream stream, Layout layout, float scale, nint scores, CudaDataType dtype)
    {
        var cublas = CublasHandleCache.For(device, stream);
        float alpha = scale, beta = 0f;
        lock (cublas.Lock)
        {
            nint handle = cublas.Bind(stream);
            foreach (var g in layout.Gemms())
                Check(CuBlas.cublasGemmStridedBatchedEx(handle, CublasOperation.T, CublasOperation.N,
                    layout.SeqlenK, layout.SeqlenQ, layout.HeadDim, &alpha,
                    (void*)Element(layout.K.Pointer, g.KOffset), dtype, layout.KLd, g.KStride,
                    (void*)Element(layout.Q.Pointer, g.QOffset), dtype, layout.QLd, g.QStride,
                    &beta, (void*)Element(scores, g.SOffset), dtype, layout.SeqlenK, g.SStride,
                    g.Count, CublasComputeType.Compute32F, CublasGemmAlgo.Default), "cublasGemmStridedBatchedEx(S = scale * Q K^T)");
        }
    }

    /// <summary>O = P V per (batch, head): column-major O^T (d x sq) = V' P' with V' = V^T (d x sk, leading dim the row
    /// stride) and P' = P^T (sk x sq, leading dim sk): op(A) = op(B) = N, m = d, n = sq, k = sk.</summary>
    private static unsafe void Output(CudaDevice device, CudaStream stream, Layout layout, nint probabilities, CudaDataType dtype)
    {
        var cublas = CublasHandleCache.For(device, stream);
        float alpha = 1f, beta = 0f;
        lock (cublas.Lock)
        {
            nint handle = cublas.Bind(stream);
            foreach (var g in layout.Gemms())
                Check(CuBlas.cublasGemmStridedBatchedEx(handle, CublasOperation.N, CublasOperation.N,
                    layout.HeadDim, layout.SeqlenQ, layout.SeqlenK, &alpha,
                    (void*)Element(layout.V.Pointer, g.VOffset), dtype, layout.VLd, g.VStride,
                    (void*)Element(probabilities, g.SOffset), dtype, layout.SeqlenK, g.SStride,
                    &beta, (void*)Element(layout.O.Pointer, g.OOffset), dtype, layout.OLd, g.OStride,
                    g.Count, CublasComputeType.Compute32F, CublasGemmAlgo.Default), "cublasGemmStridedBatchedEx(O = P V)");
        }
    }

    private static void Softmax(CudaDevice device, CudaStream stream, ProblemShape shape, AttentionSettings settings, nint scores,
        DeviceOperand lse, bool bf16)
    {
        bool perWarp = shape.MaxSeqlenK <= WarpRowLimit;
        string name = $"unfused_softmax_{(perWarp ? "warp" : "block")}_{(bf16 ? "bf16" : "fp16")}";
        var kernel = KernelLibrary.Get(device, "unfused_softmax.cu", name, "unfused_softmax", []);
        long rows = (long)shape.Batch * shape.HeadsQ * shape.MaxSeqlenQ;
        var parameters = new UnfusedSoftmaxParams
        {
            Scores = scores, Lse = lse.Pointer, LseBatchStride = lse.StrideBatch, LseHeadStride = lse.StrideHead, Rows = rows,
            Heads = shape.HeadsQ, SeqlenQ = shape.MaxSeqlenQ, SeqlenK = shape.MaxSeqlenK,
            WindowLeft = settings.WindowLeft, WindowRight = settings.WindowRight,
        };
        const int warpBlock = 128, rowBlock = 256; // must match the kernels' __launch_bounds__
        long blocks = perWarp ? (rows + warpBlock / 32 - 1) / (warpBlock / 32) : rows;
        kernel.Launch(parameters, ((uint)Math.Min(blocks, int.MaxValue), 1, 1), ((uint)(perWarp ? warpBlock : rowBlock), 1, 1), 0, stream);
    }

    private static nint Element(nint pointer, long offset) => pointer + (nint)(offset * ElementBytes);

    private static void Check(CublasStatus status, string expression)
    {
        if (status == CublasStatus.AllocFailed)
            throw new CudaOutOfMemoryException(expression);
        CublasException.ThrowIfFailed(status, expression);
    }

    /// <summary>One strided-batched GEMM: element offsets of its first matrices and the strides between its <see cref="Count"/> matrices.</summary>
    private readonly record struct Gemm(int Count, long QOffset, long KOffset, long VOffset, long SOffset, long OOffset,
        long QStride, long KStride, long VStride, long SStride, long OStride);

    /// <summary>The operands, their leading dimensions for cuBLAS, and the split of the (batch, head) pairs into GEMM calls.</summary>
    private sealed class Layout
    {
        public Layout(ProblemShape shape, DeviceOperand q, DeviceOperand k, DeviceOperand v, DeviceOperand o)
        {
            (Q, K, V, O) = (q, k, v, o);
            (Batch, Heads, HeadsKv, SeqlenQ, SeqlenK, HeadDim) = (shape.Batch, shape.HeadsQ, shape.HeadsKv, shape.MaxSeqlenQ, shape.MaxSeqlenK, shape.HeadDim);
            QLd = LeadingDimension(q.StrideRow, SeqlenQ, "q");
            KLd = LeadingDimension(k.StrideRow, SeqlenK, "k");
            VLd = LeadingDimension(v.StrideRow, SeqlenK, "v");
            OLd = LeadingDimension(o.StrideRow, SeqlenQ, "output");
        }

        public DeviceOperand Q { get; }
        public DeviceOperand K { get; }
        public DeviceOperand V { get; }
        public DeviceOperand O { get; }
        public int Batch { get; }
        public int Heads { get; }
        public int HeadsKv { get; }
        public int SeqlenQ { get; }
        public int SeqlenK { get; }
        public int HeadDim { get; }
        public int QLd { get; }
        public int KLd { get; }
        public int VLd { get; }
        public int OLd { get; }

        private long ScoreMatrix => (long)SeqlenQ * SeqlenK;

        /// <summary>
        /// The (batch, head) pairs as few GEMM calls as the strides allow (a strided batch has one stride per operand, and
        /// (batch, head) strides do not flatten into one for a (batch, seqlen, heads, dim) layout): either one call per
        /// query head batched over the batch, or one call per batch item (per KV head under GQA) batched over the query
        /// heads, K and V then broadcast with stride 0 across the group that shares them.
        /// </summary>
        public IEnumerable<Gemm> Gemms()
        {
            int group = Heads / HeadsKv;
            int perBatchCalls = Batch * (group == 1 ? 1 : HeadsKv);
            if (perBatchCalls <= Heads)
            {
                for (int b = 0; b < Batch; b++)
                {
                    if (group == 1)
                    {
                        yield return new Gemm(Heads, b * Q.StrideBatch, b * K.StrideBatch, b * V.StrideBatch, b * Heads * ScoreMatrix,
                            b * O.StrideBatch, Q.StrideHead, K.StrideHead, V.StrideHead, ScoreMatrix, O.StrideHead);
                        continue;
                    }
                    for (int hk = 0; hk < HeadsKv; hk++)
                    {
                        int h0 = hk * group;
                        yield return new Gemm(group, b * Q.StrideBatch + h0 * Q.StrideHead, b * K.StrideBatch + hk * K.StrideHead,
                            b * V.StrideBatch + hk * V.StrideHead, ((long)b * Heads + h0) * ScoreMatrix, b * O.StrideBatch + h0 * O.StrideHead,
                            Q.StrideHead, 0, 0, ScoreMatrix, O.StrideHead);
                    }
                }
                yield break;
            }
            for (int h = 0; h < Heads; h++)
            {
                int hk = h / group;
                yield return new Gemm(Batch, h * Q.StrideHead, hk * K.StrideHead, hk * V.StrideHead, h * ScoreMatrix, h * O.StrideHead,
                    Q.StrideBatch, K.StrideBatch, V.StrideBatch, Heads * ScoreMatrix, O.StrideBatch);
            }
        }

        /// <summary>cuBLAS's leading dimension of a row-major (rows x dim) matrix: its row stride, which must keep rows
        /// apart (ld &gt;= dim) and fit an int. A single row's stride is irrelevant (and may be anything in a view).</summary>
        private int LeadingDimension(long rowStride, int rows, string name)
        {
            if (rows <= 1) return Math.Max(HeadDim, 1);
            if (rowStride < HeadDim || rowStride > int.MaxValue)
                throw new NotSupportedException(
                    $"{name}: row stride {rowStride} cannot be a cuBLAS leading dimension (it must be at least the head dim {HeadDim} and fit an int).");
            return (int)rowStride;
        }
    }
}
