namespace FlashAttn.Cuda;

/// <summary>cuBLAS status codes (<c>cublasStatus_t</c>).</summary>
public enum CublasStatus
{
    /// <summary>CUBLAS_STATUS_SUCCESS.</summary>
    Success = 0,
    /// <summary>CUBLAS_STATUS_NOT_INITIALIZED.</summary>
    NotInitialized = 1,
    /// <summary>CUBLAS_STATUS_ALLOC_FAILED.</summary>
    AllocFailed = 3,
    /// <summary>CUBLAS_STATUS_INVALID_VALUE.</summary>
    InvalidValue = 7,
    /// <summary>CUBLAS_STATUS_ARCH_MISMATCH.</summary>
    ArchMismatch = 8,
    /// <summary>CUBLAS_STATUS_MAPPING_ERROR.</summary>
    MappingError = 11,
    /// <summary>CUBLAS_STATUS_EXECUTION_FAILED.</summary>
    ExecutionFailed = 13,
    /// <summary>CUBLAS_STATUS_INTERNAL_ERROR.</summary>
    InternalError = 14,
    /// <summary>CUBLAS_STATUS_NOT_SUPPORTED.</summary>
    NotSupported = 15,
    /// <summary>CUBLAS_STATUS_LICENSE_ERROR.</summary>
    LicenseError = 16,
}
