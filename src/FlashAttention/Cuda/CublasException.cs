using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace FlashAttn.Cuda;

/// <summary>A cuBLAS call failed.</summary>
public sealed class CublasException : Exception
{
    /// <summary>cuBLAS's status code.</summary>
    public CublasStatus Status { get; }

    /// <summary>The failing call as written in the source.</summary>
    public string Expression { get; }

    /// <summary>Creates the exception for a failed call.</summary>
    public CublasException(CublasStatus status, string expression)
        : base($"{(string.IsNullOrEmpty(expression) ? "A cuBLAS call" : expression)} failed: {Name(status)} ({(int)status}).")
    {
        Status = status;
        Expression = expression;
    }

    /// <summary>Throws a <see cref="CublasException"/> unless <paramref name="status"/> is success.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void ThrowIfFailed(CublasStatus status, [CallerArgumentExpression(nameof(status))] string expression = "")
    {
        if (status != CublasStatus.Success)
            Throw(status, expression);
    }

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void Throw(CublasStatus status, string expression) => throw new CublasException(status, expression);

    private static string Name(CublasStatus status) => status switch
    {
        CublasStatus.NotInitialized => "CUBLAS_STATUS_NOT_INITIALIZED",
        CublasStatus.AllocFailed => "CUBLAS_STATUS_ALLOC_FAILED",
        CublasStatus.InvalidValue => "CUBLAS_STATUS_INVALID_VALUE",
        CublasStatus.ArchMismatch => "CUBLAS_STATUS_ARCH_MISMATCH",
        CublasStatus.MappingError => "CUBLAS_STATUS_MAPPING_ERROR",
        CublasStatus.ExecutionFailed => "CUBLAS_STATUS_EXECUTION_FAILED",
        CublasStatus.InternalError => "CUBLAS_STATUS_INTERNAL_ERROR",
        CublasStatus.NotSupported => "CUBLAS_STATUS_NOT_SUPPORTED",
        CublasStatus.LicenseError => "CUBLAS_STATUS_LICENSE_ERROR",
        _ => $"cuBLAS status {(int)status}",
    };
}
