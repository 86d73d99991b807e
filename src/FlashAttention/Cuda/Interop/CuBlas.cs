using System.Runtime.InteropServices;

namespace FlashAttn.Cuda.Interop;

/// <summary><c>cudaDataType</c> values (library_types.h).</summary>
internal enum CudaDataType
{
    R32F = 0,
    R64F = 1,
    R16F = 2,
    R16BF = 14,
}

/// <summary><c>cublasComputeType_t</c> values.</summary>
internal enum CublasComputeType
{
    Compute16F = 64,
    Compute16FPedantic = 65,
    Compute32F = 68,
    Compute32FPedantic = 69,
    Compute64F = 70,
    Compute64FPedantic = 71,
    Compute32I = 72,
    Compute32IPedantic = 73,
    Compute32FFast16F = 74,
    Compute32FFast16BF = 75,
    Compute32FFastTF32 = 77,
}

/// <summary><c>cublasOperation_t</c> values.</summary>
internal enum CublasOperation
{
    N = 0,
    T = 1,
    C = 2,
}

/// <summary><c>cublasGemmAlgo_t</c> values.</summary>
internal enum CublasGemmAlgo
{
    Default = -1,
    DefaultTensorOp = 99,
}

/// <summary>
/// cuBLAS imports (libcublas.so.13 or .so.12), for the unfused attention baseline. cuBLAS is column-major: a row-major
/// (m x k) matrix is a column-major (k x m) one, so row-major C = A B is computed as column-major C^T = B^T A^T.
/// </summary>
internal static unsafe partial class CuBlas
{
    internal const string Library = NativeLibraryResolver.CublasLogicalName;

    static CuBlas() => NativeLibraryResolver.EnsureRegistered();

    [LibraryImport(Library)] internal static partial CublasStatus cublasCreate_v2(out nint handle);
    [LibraryImport(Library)] internal static partial CublasStatus cublasDestroy_v2(nint handle);
    [LibraryImport(Library)] internal static partial CublasStatus cublasSetStream_v2(nint handle, nint stream);
    [LibraryImport(Library)] internal static partial CublasStatus cublasGetVersion_v2(nint handle, out int version);

    /// <summary>
    /// C[i] = alpha * op(A[i]) op(B[i]) + beta * C[i] for i in [0, batchCount), with A[i] = A + i * strideA elements.
    /// alpha and beta point to host scalars of the compute type's scale type (float for <see cref="CublasComputeType.Compute32F"/>).
    /// </summary>
    [LibraryImport(Library)]
    internal static partial CublasStatus cublasGemmStridedBatchedEx(nint handle, CublasOperation transa, CublasOperation transb,
        int m, int n, int k, void* alpha,
        void* a, CudaDataType aType, int lda, long strideA,
        void* b, CudaDataType bType, int ldb, long strideB,
        void* beta, void* c, CudaDataType cType, int ldc, long strideC,
        int batchCount, CublasComputeType computeType, CublasGemmAlgo algo);
}
