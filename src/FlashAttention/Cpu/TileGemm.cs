using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace FlashAttn.Cpu;

/// <summary>How <see cref="TileGemm"/> starts the output tile.</summary>
internal enum GemmInit
{
    /// <summary>C = A B.</summary>
    Overwrite,
    /// <summary>C += A B.</summary>
    Accumulate,
    /// <summary>C = diag(rowScale) C + A B: the online-softmax rescale of O fused into the PV product.</summary>
    ScaleRows,
}

/// <summary>
/// The single matrix kernel of the CPU path: C (m x n) op= A (m x k) * B (k x n), all row-major fp32.
/// Every product of FlashAttention forward and backward is of this form once K, V are stored transposed
/// where needed (QK^T = Q * Kt, PV, dO Vt, dS^T Q, dS K). Register tile: 4 rows by 4 vectors (16 accumulators),
/// so each k step loads 4 vectors of B and broadcasts 4 values of A for 16 fused multiply-adds.
/// Requires m % 4 == 0 and n % <see cref="Width"/> == 0; callers pad tiles to that.
/// </summary>
internal static unsafe class TileGemm
{
    /// <summary>Floats per vector on this machine; tiles and head dims are padded to a multiple of it.</summary>
    public static int Width { get; } =
        Vector512.IsHardwareAccelerated ? Vector512<float>.Count :
        Vector256.IsHardwareAccelerated ? Vector256<float>.Count :
        Vector128.IsHardwareAccelerated ? Vector128<float>.Count : 1;

    /// <summary>Name of the instruction width in use (for the CLI and notes).</summary>
    public static string WidthName => Width switch { 16 => "Vector512", 8 => "Vector256", 4 => "Vector128", _ => "scalar" };

    public static void Multiply(float* a, int lda, float* b, int ldb, float* c, int ldc, int m, int n, int k, GemmInit init, float* rowScale = null) =>
        Dispatch<UnitStep>(a, lda, 1, b, ldb, c, ldc, m, n, k, init, rowScale);

    /// <summary>
    /// C op= A B with A given as its transpose: <paramref name="at"/> is k x m row-major (leading dimension
    /// <paramref name="ldat"/>). Backward's dV += P^T dO and dK += dS^T Q read the P and dS tiles this way, with no
    /// transposed copy; the four A values a k step broadcasts are then adjacent.
    /// </summary>
    public static void MultiplyTransposedA(float* at, int ldat, float* b, int ldb, float* c, int ldc, int m, int n, int k, GemmInit init) =>
        Dispatch<StridedStep>(at, 1, ldat, b, ldb, c, ldc, m, n, k, init, null);

    private static void Dispatch<TStep>(float* a, int aRowStride, int aStep, float* b, int ldb, float* c, int ldc, int m, int n, int k,
        GemmInit init, float* rowScale) where TStep : struct, IAStep
    {
        switch (Width)
        {
            case 16: Run<Vector512Ops, Vector512<float>, TStep>(a, aRowStride, aStep, b, ldb, c, ldc, m, n, k, init, rowScale); break;
            case 8: Run<Vector256Ops, Vector256<float>, TStep>(a, aRowStride, aStep, b, ldb, c, ldc, m, n, k, init, rowScale); break;
            case 4: Run<Vector128Ops, Vector128<float>, TStep>(a, aRowStride, aStep, b, ldb, c, ldc, m, n, k, init, rowScale); break;
            default: Run<ScalarOps, float, TStep>(a, aRowStride, aStep, b, ldb, c, ldc, m, n, k, init, rowScale); break;
        }
    }

    /// <summary>How far A's next k element is: a compile-time 1 for row-major A (the JIT then keeps the plain indexed
    /// loads of the original kernel), the leading dimension for transposed A.</summary>
    internal interface IAStep
    {
        static abstract long Offset(int p, int aStep);
    }

    private struct UnitStep : IAStep
    {
        public static long Offset(int p, int aStep) => p;
    }

    private struct StridedStep : IAStep
    {
        public static long Offset(int p, int aStep) => (long)p * aStep;
    }

    // Full optimisation from the first call: tier-0 code of these loops runs ~3x slower.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    // A's element (i, p) is a[i * aRowStride + p * aStep]: (lda, 1) row-major, (1, lda) when A is passed transposed.
    internal static void Run<TOps, TVec, TStep>(float* a, int aRowStride, int aStep, float* b, int ldb, float* c, int ldc, int m, int n, int k,
        GemmInit init, float* rowScale)
        where TOps : struct, IVectorOps<TVec> where TVec : struct where TStep : struct, IAStep
    {
        int w = TOps.Count;
        Debug.Assert(m % 4 == 0 && n % w == 0, "tiles must be padded to 4 rows and whole vectors");
        for (int i = 0; i < m; i += 4)
        {
            int j = 0;
            for (; j + 4 * w <= n; j += 4 * w)
                Block4x4<TOps, TVec, TStep>(a + i * aRowStride, aRowStride, aStep, b + j, ldb, c + i * ldc + j, ldc, k, init, rowScale == null ? null : rowScale + i);
            for (; j < n; j += w)
                Block4x1<TOps, TVec, TStep>(a + i * aRowStride, aRowStride, aStep, b + j, ldb, c + i * ldc + j, ldc, k, init, rowScale == null ? null : rowScale + i);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static TVec Start<TOps, TVec>(float* c, GemmInit init, float* rowScale, int row)
        where TOps : struct, IVectorOps<TVec> where TVec : struct => init switch
        {
            GemmInit.Overwrite => TOps.Zero,
            GemmInit.Accumulate => TOps.Load(c),
            _ => TOps.Multiply(TOps.Load(c), TOps.Broadcast(rowScale[row])),
        };

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Block4x4<TOps, TVec, TStep>(float* a, int aRowStride, int aStep, float* b, int ldb, float* c, int ldc, int k, GemmInit init, float* rowScale)
        where TOps : struct, IVectorOps<TVec> where TVec : struct where TStep : struct, IAStep
    {
        int w = TOps.Count;
        float* c0 = c, c1 = c + ldc, c2 = c + 2 * ldc, c3 = c + 3 * ldc;
        TVec x00 = Start<TOps, TVec>(c0, init, rowScale, 0), x01 = Start<TOps, TVec>(c0 + w, init, rowScale, 0), x02 = Start<TOps, TVec>(c0 + 2 * w, init, rowScale, 0), x03 = Start<TOps, TVec>(c0 + 3 * w, init, rowScale, 0);
        TVec x10 = Start<TOps, TVec>(c1, init, rowScale, 1), x11 = Start<TOps, TVec>(c1 + w, init, rowScale, 1), x12 = Start<TOps, TVec>(c1 + 2 * w, init, rowScale, 1), x13 = Start<TOps, TVec>(c1 + 3 * w, init, rowScale, 1);
        TVec x20 = Start<TOps, TVec>(c2, init, rowScale, 2), x21 = Start<TOps, TVec>(c2 + w, init, rowScale, 2), x22 = Start<TOps, TVec>(c2 + 2 * w, init, rowScale, 2), x23 = Start<TOps, TVec>(c2 + 3 * w, init, rowScale, 2);
        TVec x30 = Start<TOps, TVec>(c3, init, rowScale, 3), x31 = Start<TOps, TVec>(c3 + w, init, rowScale, 3), x32 = Start<TOps, TVec>(c3 + 2 * w, init, rowScale, 3), x33 = Start<TOps, TVec>(c3 + 3 * w, init, rowScale, 3);
        float* a0 = a, a1 = a + aRowStride, a2 = a + 2 * aRowStride, a3 = a + 3 * aRowStride;
        for (int p = 0; p < k; p++)
        {
            float* bp = b + p * ldb;
            long ap = TStep.Offset(p, aStep);
            TVec b0 = TOps.Load(bp), b1 = TOps.Load(bp + w), b2 = TOps.Load(bp + 2 * w), b3 = TOps.Load(bp + 3 * w);
            TVec s = TOps.Broadcast(a0[ap]);
            x00 = TOps.MultiplyAdd(s, b0, x00); x01 = TOps.MultiplyAdd(s, b1, x01); x02 = TOps.MultiplyAdd(s, b2, x02); x03 = TOps.MultiplyAdd(s, b3, x03);
            s = TOps.Broadcast(a1[ap]);
            x10 = TOps.MultiplyAdd(s, b0, x10); x11 = TOps.MultiplyAdd(s, b1, x11); x12 = TOps.MultiplyAdd(s, b2, x12); x13 = TOps.MultiplyAdd(s, b3, x13);
            s = TOps.Broadcast(a2[ap]);
            x20 = TOps.MultiplyAdd(s, b0, x20); x21 = TOps.MultiplyAdd(s, b1, x21); x22 = TOps.MultiplyAdd(s, b2, x22); x23 = TOps.MultiplyAdd(s, b3, x23);
            s = TOps.Broadcast(a3[ap]);
            x30 = TOps.MultiplyAdd(s, b0, x30); x31 = TOps.MultiplyAdd(s, b1, x31); x32 = TOps.MultiplyAdd(s, b2, x32); x33 = TOps.MultiplyAdd(s, b3, x33);
        }
        TOps.Store(c0, x00); TOps.Store(c0 + w, x01); TOps.Store(c0 + 2 * w, x02); TOps.Store(c0 + 3 * w, x03);
        TOps.Store(c1, x10); TOps.Store(c1 + w, x11); TOps.Store(c1 + 2 * w, x12); TOps.Store(c1 + 3 * w, x13);
        TOps.Store(c2, x20); TOps.Store(c2 + w, x21); TOps.Store(c2 + 2 * w, x22); TOps.Store(c2 + 3 * w, x23);
        TOps.Store(c3, x30); TOps.Store(c3 + w, x31); TOps.Store(c3 + 2 * w, x32); TOps.Store(c3 + 3 * w, x33);
    }

    /// <summary>The column remainder: 4 rows by one vector.</summary>
    // Full optimisation from the first call: tier-0 code of these loops runs ~3x slower.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    private static void Block4x1<TOps, TVec, TStep>(float* a, int aRowStride, int aStep, float* b, int ldb, float* c, int ldc, int k, GemmInit init, float* rowScale)
        where TOps : struct, IVectorOps<TVec> where TVec : struct where TStep : struct, IAStep
    {
        TVec x0 = Start<TOps, TVec>(c, init, rowScale, 0), x1 = Start<TOps, TVec>(c + ldc, init, rowScale, 1);
        TVec x2 = Start<TOps, TVec>(c + 2 * ldc, init, rowScale, 2), x3 = Start<TOps, TVec>(c + 3 * ldc, init, rowScale, 3);
        for (int p = 0; p < k; p++)
        {
            TVec bv = TOps.Load(b + p * ldb);
            float* ap = a + TStep.Offset(p, aStep);
            x0 = TOps.MultiplyAdd(TOps.Broadcast(ap[0]), bv, x0);
            x1 = TOps.MultiplyAdd(TOps.Broadcast(ap[aRowStride]), bv, x1);
            x2 = TOps.MultiplyAdd(TOps.Broadcast(ap[2 * aRowStride]), bv, x2);
            x3 = TOps.MultiplyAdd(TOps.Broadcast(ap[3 * aRowStride]), bv, x3);
        }
        TOps.Store(c, x0); TOps.Store(c + ldc, x1); TOps.Store(c + 2 * ldc, x2); TOps.Store(c + 3 * ldc, x3);
    }
}
