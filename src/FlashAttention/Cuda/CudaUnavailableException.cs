namespace FlashAttn.Cuda;

/// <summary>
/// The CUDA path cannot run on this machine: no driver, no GPU, no NVRTC, a GPU older than sm_80, or an NVRTC or driver
/// too old (see CudaRequirements).
/// The message says which, what was searched, and how to fix it.
/// </summary>
public sealed class CudaUnavailableException : Exception
{
    /// <summary>Creates the exception with a message giving the cause and the fix.</summary>
    public CudaUnavailableException(string message)
        : base(message)
    {
    }

    /// <summary>Creates the exception with a message giving the cause and the fix, and the underlying error.</summary>
    public CudaUnavailableException(string message, Exception innerException)
        : base(message, innerException)
    {
    }
}
