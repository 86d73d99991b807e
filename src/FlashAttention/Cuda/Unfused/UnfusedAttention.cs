using FlashAttn.Cuda.Interop;
using FlashAttn.Validation;

namespace FlashAttn.Cuda;

/// <summary>
/// The unfused attention baseline ("native attention" in the FlashAttention paper; PyTorch's math path,
/// <c>softmax(q @ k.transpose(-2, -1) * scale) @ v</c> under autograd): the whole score matrix is materialised in device
/// memory. Everything runs on the caller's stream, nothing synchronised.
/// <para>Forward, three steps:</para>
/// <list type="number">
/// <item>S = scale * Q K^T: cuBLAS strided-batched GEMM (fp32 accumulation) into a dense (batch, heads_q, seqlen_q,
/// seqlen_k) workspace in the input dtype, reading Q and K in place through their strides. The scale rides on the
/// GEMM's alpha (free, and, as in PyTorch's math path, which scales q and k before the matmul, the stored scores are the
/// scaled ones, further from fp16's overflow at 65504).</item>
/// <item>P = softmax(mask(S)) in place, one warp or block per row (Kernels/unfused_softmax.cu), also writing the
/// fp32 log-sum-exp (+inf and P = 0 for a row that sees no key).</item>
/// <item>O = P V: cuBLAS strided-batched GEMM written through the output's strides.</item>
/// </list>
/// <para>Backward (<see cref="Backward{T}"/>), from the P that <see cref="ForwardKeepingProbabilities{T}"/> kept alive, as
/// autograd keeps the softmax output saved for backward:</para>
/// <list type="number">
/// <item>dV = P^T dO (cuBLAS; under GQA the group's query heads are summed into their KV head by GEMMs with beta = 1).</item>
/// <item>dP = dO V^T (cuBLAS) into a second dense score-sized matrix in the input dtype.</item>
/// <item>dS = P * (dP - rowsum(P * dP)) in place over dP, fp32 math, one warp or block per row
/// (Kernels/unfused_softmax_bwd.cu; PyTorch's _softmax_backward_data). Masked entries have P = 0, hence dS = 0.</item>
/// <item>dQ = scale * dS K and dK = scale * dS^T Q (cuBLAS, the scale on alpha; dK summed over the GQA group).</item>
/// </list>
/// <para>Memory, for the benchmark's comparison: the forward holds one score matrix (S, turned into P in place); forward +
/// backward peaks at two (P kept from the forward, plus dP/dS), 2 * batch * heads_q * seqlen_q * seqlen_k * 2 bytes. That is
/// a lower bound on PyTorch's math path, which at the softmax backward also holds P, dP and a separate dS (three
/// matrices) and, under GQA, materialises K and V repeated to heads_q; so the figure favours the baseline, never FlashAttention.</para>
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
        using var probabilities = ForwardKeepingProbabilities<T>(device, shape, settings, q, k, v, output, lse, stream);
        return probabilities.ByteLength;
    }

    /// <summary>
    /// Runs the unfused forward (as <see cref="Forward{T}"/>) and hands over the probabilities instead of freeing them: a
    /// dense (batch, heads_q, seqlen_q, seqlen_k) matrix of T (0 where masked), the tensor PyTorch's autograd saves from
    /// the softmax for backward. Pass it to <see cref="Backward{T}"/> (which only reads it, so one forward can feed several
    /// backward calls) and dispose it afterwards; its <see cref="DeviceMemory.ByteLength"/> is the forward's workspace
    /// (0 bytes, pointer 0, when there is no query or no key).
    /// </summary>
    /// <exception cref="NotSupportedException">Varlen shapes, dropout, softcap or ALiBi.</exception>
    /// <exception cref="CudaOutOfMemoryException">The score matrix (or cuBLAS's workspace) does not fit on the GPU.</exception>
    public static DeviceMemory ForwardKeepingProbabilities<T>(CudaDevice device, ProblemShape shape, AttentionSettings settings,
        DeviceOperand q, DeviceOperand k, DeviceOperand v, DeviceOperand output, DeviceOperand lse, CudaStream stream) where T : unmanaged
    {
        bool bf16 = Validate<T>(device, shape, settings, stream);
        int batch = shape.Batch, seqlenQ = shape.MaxSeqlenQ, seqlenK = shape.MaxSeqlenK, heads = shape.HeadsQ, dim = shape.HeadDim;
        if (batch == 0 || seqlenQ == 0 || heads == 0) return DeviceMemory.Allocate(device, 0);
        var dtype = bf16 ? CudaDataType.R16BF : CudaDataType.R16F;
        var layout = new Layout(shape);
        var (qm, km, vm, om) = (layout.PerQueryHead(q, "q"), layout.PerKvHead(k, "k"), layout.PerKvHead(v, "v"), layout.PerQueryHead(output, "output"));

        device.MakeCurrent();
        var scores = DeviceMemory.Allocate(device, layout.ScoreBytes); // throws CudaOutOfMemoryException with the request and free memory
        try
        {
            SanitizerScoreFill.ZeroIfRequested(scores, stream);
            var s = layout.Scores(scores.Pointer);
            if (seqlenK > 0) // S (sk x sq, column-major) = K'^T Q' where Q' = Q^T (d x sq) and K' = K^T (d x sk) are the column-major views
                Gemms(device, stream, layout.QueryHeadGemms(), CublasOperation.T, CublasOperation.N, seqlenK, seqlenQ, dim,
                    settings.Scale, km, qm, 0f, s, dtype, "S = scale * Q K^T");
            Softmax(device, stream, shape, settings, scores.Pointer, lse, bf16);
            if (seqlenK > 0) // O^T (d x sq) = V' P' with V' = V^T (d x sk) and P' = P^T (sk x sq)
                Gemms(device, stream, layout.QueryHeadGemms(), CublasOperation.N, CublasOperation.N, dim, seqlenQ, seqlenK,
                    1f, vm, s, 0f, om, dtype, "O = P V");
            else
                HeadCopy.Copy(device, output, output, batch, seqlenQ, heads, 0, dim, stream); // no keys: O = 0
            return scores;
        }
        catch
        {
            scores.Dispose();
            throw;
        }
    }

    /// <summary>
    /// The unfused backward: writes dQ, dK, dV (dK and dV summed over each GQA group) from dO and the probabilities that
    /// <see cref="ForwardKeepingProbabilities{T}"/> returned for the same shape, settings, q and k (left unchanged).
    /// Returns the bytes of device workspace it allocated (dP, overwritten by dS: one more score matrix), freed before
    /// returning; forward + backward's peak is that plus <paramref name="probabilities"/>' length.
    /// </summary>
    /// <exception cref="NotSupportedException">Varlen shapes, dropout, softcap or ALiBi.</exception>
    /// <exception cref="ArgumentException"><paramref name="probabilities"/> is not a (batch, heads_q, seqlen_q, seqlen_k) matrix of T.</exception>
    /// <exception cref="CudaOutOfMemoryException">dP (or cuBLAS's workspace) does not fit on the GPU.</exception>
    public static long Backward<T>(CudaDevice device, ProblemShape shape, AttentionSettings settings, DeviceMemory probabilities,
        DeviceOperand dOut, DeviceOperand q, DeviceOperand k, DeviceOperand v, DeviceOperand dq, DeviceOperand dk, DeviceOperand dv,
        CudaStream stream) where T : unmanaged
    {
        bool bf16 = Validate<T>(device, shape, settings, stream);
        ArgumentNullException.ThrowIfNull(probabilities);
        int batch = shape.Batch, seqlenQ = shape.MaxSeqlenQ, seqlenK = shape.MaxSeqlenK, heads = shape.HeadsQ, headsKv = shape.HeadsKv;
        int dim = shape.HeadDim;
        if (batch == 0 || heads == 0) return 0;
        var layout = new Layout(shape);
        long expected = seqlenQ == 0 ? 0 : layout.ScoreBytes;
        if (probabilities.ByteLength != expected)
            throw new ArgumentException(
                $"The probabilities hold {probabilities.ByteLength} bytes; a (batch, heads_q, seqlen_q, seqlen_k) = ({batch}, {heads}, {seqlenQ}, {seqlenK}) matrix of 16-bit elements from ForwardKeepingProbabilities has {expected}.",
                nameof(probabilities));

        device.MakeCurrent();
        if (seqlenQ == 0 || seqlenK == 0)
        {
            // Nothing attends: no query gives dK = dV = 0, no key gives dQ = 0 (and empty dK, dV).
            HeadCopy.Copy(device, dq, dq, batch, seqlenQ, heads, 0, dim, stream);
            HeadCopy.Copy(device, dk, dk, batch, seqlenK, headsKv, 0, dim, stream);
            HeadCopy.Copy(device, dv, dv, batch, seqlenK, headsKv, 0, dim, stream);
            return 0;
        }
        var dtype = bf16 ? CudaDataType.R16BF : CudaDataType.R16F;
        var (qm, km, vm) = (layout.PerQueryHead(q, "q"), layout.PerKvHead(k, "k"), layout.PerKvHead(v, "v"));
        var (dom, dqm, dkm, dvm) = (layout.PerQueryHead(dOut, "dOut"), layout.PerQueryHead(dq, "dq"), layout.PerKvHead(dk, "dk"),
            layout.PerKvHead(dv, "dv"));
        var p = layout.Scores(probabilities.Pointer);

        // dV (sk x d) = P^T dO: column-major dV^T (d x sk) = dO' (d x sq) * P'^T, P' = P^T (sk x sq) read transposed.
        // Under GQA the heads of a group add into their KV head in turn (beta = 1 after the first).
        for (int member = 0; member < layout.Group; member++)
            Gemms(device, stream, layout.KvHeadGemms(member), CublasOperation.N, CublasOperation.T, dim, seqlenK, seqlenQ,
                1f, dom, p, member == 0 ? 0f : 1f, dvm, dtype, "dV = P^T dO");

        using var gradients = DeviceMemory.Allocate(device, layout.ScoreBytes);
        SanitizerScoreFill.ZeroIfRequested(gradients, stream);
        var ds = layout.Scores(gradients.Pointer);
        // dP (sq x sk) = dO V^T: column-major dP^T (sk x sq) = V'^T dO', as S = Q K^T in the forward.
        Gemms(device, stream, layout.QueryHeadGemms(), CublasOperation.T, CublasOperation.N, seqlenK, seqlenQ, dim,
            1f, vm, dom, 0f, ds, dtype, "dP = dO V^T");
        SoftmaxBackward(device, stream, shape, probabilities.Pointer, gradients.Pointer, bf16);
        // dQ (sq x d) = scale * dS K: column-major dQ^T (d x sq) = K' dS', as O = P V in the forward.
        Gemms(device, stream, layout.QueryHeadGemms(), CublasOperation.N, CublasOperation.N, dim, seqlenQ, seqlenK,
            settings.Scale, km, ds, 0f, dqm, dtype, "dQ = scale * dS K");
        // dK (sk x d) = scale * dS^T Q, as dV = P^T dO.
        for (int member = 0; member < layout.Group; member++)
            Gemms(device, stream, layout.KvHeadGemms(member), CublasOperation.N, CublasOperation.T, dim, seqlenK, seqlenQ,
                settings.Scale, qm, ds, member == 0 ? 0f : 1f, dkm, dtype, "dK = scale * dS^T Q");
        return gradients.ByteLength;
    }

    /// <summary>Argument checks shared by forward and backward; true for bf16.</summary>
    private static bool Validate<T>(CudaDevice device, ProblemShape shape, AttentionSettings settings, CudaStream stream) where T : unmanaged
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
        return bf16;
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

    /// <summary>
    /// C = alpha * op(A) op(B) + beta * C for every matrix of every call in <paramref name="gemms"/> (column-major m x n
    /// results, fp32 accumulation, cuBLAS's default algorithm). The row-major (rows x cols) matrices of attention are
    /// column-major (cols x rows) to cuBLAS with the row stride as leading dimension.
    /// </summary>
    private static unsafe void Gemms(CudaDevice device, CudaStream stream, IEnumerable<Gemm> gemms, CublasOperation opA,
        CublasOperation opB, int m, int n, int k, float alpha, Matrix a, Matrix b, float beta, Matrix c, CudaDataType dtype, string what)
    {
        var cublas = CublasHandleCache.For(device, stream);
        lock (cublas.Lock)
        {
            nint handle = cublas.Bind(stream);
            foreach (var g in gemms)
            {
                var (pa, sa) = g.Of(a);
                var (pb, sb) = g.Of(b);
                var (pc, sc) = g.Of(c);
                Check(CuBlas.cublasGemmStridedBatchedEx(handle, opA, opB, m, n, k, &alpha,
                    (void*)pa, dtype, a.Ld, sa, (void*)pb, dtype, b.Ld, sb,
                    &beta, (void*)pc, dtype, c.Ld, sc, g.Count, CublasComputeType.Compute32F, CublasGemmAlgo.Default),
                    $"cublasGemmStridedBatchedEx({what})");
            }
        }
    }

    internal static void Softmax(CudaDevice device, CudaStream stream, ProblemShape shape, AttentionSettings settings, nint scores,
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
        kernel.Launch(parameters, RowGrid(rows, perWarp), RowBlock(perWarp), 0, stream);
    }

    internal static void SoftmaxBackward(CudaDevice device, CudaStream stream, ProblemShape shape, nint probabilities, nint gradients, bool bf16)
    {
        bool perWarp = shape.MaxSeqlenK <= WarpRowLimit;
        string name = $"unfused_softmax_bwd_{(perWarp ? "warp" : "block")}_{(bf16 ? "bf16" : "fp16")}";
        var kernel = KernelLibrary.Get(device, "unfused_softmax_bwd.cu", name, "unfused_softmax_bwd", []);
        long rows = (long)shape.Batch * shape.HeadsQ * shape.MaxSeqlenQ;
        var parameters = new UnfusedSoftmaxBackwardParams
        {
            Probabilities = probabilities, Gradients = gradients, Rows = rows, SeqlenK = shape.MaxSeqlenK,
        };
        kernel.Launch(parameters, RowGrid(rows, perWarp), RowBlock(perWarp), 0, stream);
    }

    private const int WarpBlock = 128, RowBlockThreads = 256; // must match the kernels' __launch_bounds__

    /// <summary>A warp per row (four rows per 128-thread block) or a 256-thread block per row; the kernels grid-stride.</summary>
    private static (uint, uint, uint) RowGrid(long rows, bool perWarp)
    {
        long blocks = perWarp ? (rows + WarpBlock / 32 - 1) / (WarpBlock / 32) : rows;
        return ((uint)Math.Min(blocks, int.MaxValue), 1, 1);
    }

    private static (uint, uint, uint) RowBlock(bool perWarp) => ((uint)(perWarp ? WarpBlock : RowBlockThreads), 1, 1);

    private static void Check(CublasStatus status, string expression)
    {
        if (status == CublasStatus.AllocFailed)
            throw new CudaOutOfMemoryException(expression);
        CublasException.ThrowIfFailed(status, expression);
    }

    /// <summary>
    /// One operand of the GEMMs: a (batch, head) family of row-major matrices, indexed by query head or by KV head, with
    /// element strides between batch items and heads and cuBLAS's leading dimension (the row stride).
    /// </summary>
    private readonly record struct Matrix(nint Pointer, long StrideBatch, long StrideHead, int Ld, bool ByKvHead);

    /// <summary>
    /// One strided-batched GEMM call: <see cref="Count"/> matrices, the first at (<see cref="Batch"/>, <see cref="Head"/>,
    /// <see cref="KvHead"/>), each next one <see cref="BatchStep"/>, <see cref="HeadStep"/>, <see cref="KvHeadStep"/> further
    /// (a strided batch has one stride per operand, and (batch, head) strides do not flatten into one for a (batch,
    /// seqlen, heads, dim) layout, so a call walks either the heads of one batch item or the batch of one head).
    /// </summary>
    private readonly record struct Gemm(int Count, int Batch, int Head, int KvHead, int BatchStep, int HeadStep, int KvHeadStep)
    {
        /// <summary>The first matrix's address and the element stride between matrices of <paramref name="x"/>.</summary>
        public (nint Pointer, long Stride) Of(Matrix x)
        {
            int head = x.ByKvHead ? KvHead : Head, headStep = x.ByKvHead ? KvHeadStep : HeadStep;
            long offset = Batch * x.StrideBatch + head * x.StrideHead;
            return (x.Pointer + (nint)(offset * ElementBytes), BatchStep * x.StrideBatch + headStep * x.StrideHead);
        }
    }

    /// <summary>The problem's geometry, its operands as <see cref="Matrix"/> values and the split of the (batch, head) pairs into GEMM calls.</summary>
    private sealed class Layout(ProblemShape shape)
    {
        private readonly int _batch = shape.Batch, _heads = shape.HeadsQ, _headsKv = shape.HeadsKv;
        private readonly int _seqlenQ = shape.MaxSeqlenQ, _seqlenK = shape.MaxSeqlenK, _headDim = shape.HeadDim;

        /// <summary>Query heads per KV head.</summary>
        public int Group { get; } = shape.HeadsQ / shape.HeadsKv;

        private long ScoreMatrix => (long)_seqlenQ * _seqlenK;

        /// <summary>Bytes of one dense (batch, heads_q, seqlen_q, seqlen_k) matrix.</summary>
        public long ScoreBytes => (long)_batch * _heads * ScoreMatrix * ElementBytes;

        /// <summary>A (batch, seqlen_q, heads_q, d) operand: q, O, dO, dQ.</summary>
        public Matrix PerQueryHead(DeviceOperand x, string name) =>
            new(x.Pointer, x.StrideBatch, x.StrideHead, LeadingDimension(x.StrideRow, _seqlenQ, name), ByKvHead: false);

        /// <summary>A (batch, seqlen_k, heads_kv, d) operand: k, v, dK, dV.</summary>
        public Matrix PerKvHead(DeviceOperand x, string name) =>
            new(x.Pointer, x.StrideBatch, x.StrideHead, LeadingDimension(x.StrideRow, _seqlenK, name), ByKvHead: true);

        /// <summary>A dense (batch, heads_q, seqlen_q, seqlen_k) matrix: S, P, dP, dS.</summary>
        public Matrix Scores(nint pointer) => new(pointer, _heads * ScoreMatrix, ScoreMatrix, _seqlenK, ByKvHead: false);

        /// <summary>
        /// Every (batch, query head) once, for the products whose result is per query head (S, O, dP, dQ), as few calls as
        /// the strides allow: one call per query head batched over the batch, or one per batch item (per KV head under GQA)
        /// batched over the query heads, the KV operand then broadcast with stride 0 across the group that shares it.
        /// </summary>
        public IEnumerable<Gemm> QueryHeadGemms()
        {
            int perBatchCalls = _batch * (Group == 1 ? 1 : _headsKv);
            if (perBatchCalls <= _heads)
            {
                for (int b = 0; b < _batch; b++)
                {
                    if (Group == 1)
                    {
                        yield return new Gemm(_heads, b, 0, 0, BatchStep: 0, HeadStep: 1, KvHeadStep: 1);
                        continue;
                    }
                    for (int hk = 0; hk < _headsKv; hk++)
                        yield return new Gemm(Group, b, hk * Group, hk, BatchStep: 0, HeadStep: 1, KvHeadStep: 0);
                }
                yield break;
            }
            for (int h = 0; h < _heads; h++)
                yield return new Gemm(_batch, 0, h, h / Group, BatchStep: 1, HeadStep: 0, KvHeadStep: 0);
        }

        /// <summary>
        /// Every (batch, KV head) once with its <paramref name="member"/>-th query head, for the products whose result is
        /// per KV head (dK, dV): no two matrices of a call write the same KV head, so the group is summed by one round of
        /// calls per member. One call per batch item batched over the KV heads, or one per KV head batched over the batch.
        /// </summary>
        public IEnumerable<Gemm> KvHeadGemms(int member)
        {
            if (_batch <= _headsKv)
            {
                for (int b = 0; b < _batch; b++)
                    yield return new Gemm(_headsKv, b, member, 0, BatchStep: 0, HeadStep: Group, KvHeadStep: 1);
                yield break;
            }
            for (int hk = 0; hk < _headsKv; hk++)
                yield return new Gemm(_batch, 0, hk * Group + member, hk, BatchStep: 1, HeadStep: 0, KvHeadStep: 0);
        }

        /// <summary>cuBLAS's leading dimension of a row-major (rows x dim) matrix: its row stride, which must keep rows
        /// apart (ld &gt;= dim) and fit an int. A single row's stride is irrelevant (and may be anything in a view).</summary>
        private int LeadingDimension(long rowStride, int rows, string name)
        {
            if (rows <= 1) return Math.Max(_headDim, 1);
            if (rowStride < _headDim || rowStride > int.MaxValue)
                throw new NotSupportedException(
                    $"{name}: row stride {rowStride} cannot be a cuBLAS leading dimension (it must be at least the head dim {_headDim} and fit an int).");
            return (int)rowStride;
        }
    }
}
