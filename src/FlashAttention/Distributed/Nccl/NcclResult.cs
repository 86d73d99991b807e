namespace FlashAttn.Distributed;

/// <summary>NCCL's result codes (<c>ncclResult_t</c>).</summary>
public enum NcclResult
{
    /// <summary>ncclSuccess.</summary>
    Success = 0,
    /// <summary>ncclUnhandledCudaError: a CUDA call inside NCCL failed.</summary>
    UnhandledCudaError = 1,
    /// <summary>ncclSystemError: a system call (memory, sockets, files) failed.</summary>
    SystemError = 2,
    /// <summary>ncclInternalError.</summary>
    InternalError = 3,
    /// <summary>ncclInvalidArgument.</summary>
    InvalidArgument = 4,
    /// <summary>ncclInvalidUsage: calls in an order NCCL does not allow.</summary>
    InvalidUsage = 5,
    /// <summary>ncclRemoteError: a peer failed.</summary>
    RemoteError = 6,
    /// <summary>ncclInProgress (non-blocking communicators).</summary>
    InProgress = 7,
}

/// <summary>NCCL's element types (<c>ncclDataType_t</c>) that attention exchanges.</summary>
internal enum NcclDataType
{
    Uint8 = 1,
    Float16 = 6,
    Float32 = 7,
    Bfloat16 = 9,
}
