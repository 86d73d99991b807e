using System.Runtime.CompilerServices;

namespace FlashAttn.Distributed;

/// <summary>An NCCL call failed.</summary>
public sealed class NcclException : Exception
{
    /// <summary>NCCL's result code.</summary>
    public NcclResult Result { get; }

    /// <summary>The failing call as written in the source.</summary>
    public string Expression { get; }

    /// <summary>Creates the exception for a failed call.</summary>
    public NcclException(NcclResult result, string expression)
        : base($"{(string.IsNullOrEmpty(expression) ? "An NCCL call" : expression)} failed: nccl{result} ({(int)result}).{Hint(result)}")
    {
        Result = result;
        Expression = expression;
    }

    /// <summary>Throws an <see cref="NcclException"/> unless <paramref name="result"/> is success.</summary>
    public static void ThrowIfFailed(NcclResult result, [CallerArgumentExpression(nameof(result))] string expression = "")
    {
        if (result != NcclResult.Success)
            throw new NcclException(result, expression);
    }

    private static string Hint(NcclResult result) => result switch
    {
        NcclResult.UnhandledCudaError or NcclResult.SystemError =>
            " NCCL_DEBUG=INFO in the environment makes NCCL print why; NCCL_NVLS_ENABLE must stay 0 on machines without NVLink SHARP.",
        _ => "",
    };
}
