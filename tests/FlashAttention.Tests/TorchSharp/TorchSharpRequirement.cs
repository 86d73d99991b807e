using FlashAttn.Cuda;
using FlashAttn.Tests.Infrastructure;
using TorchSharp;

namespace FlashAttn.Tests.TorchSharp;

/// <summary>
/// TorchSharp tests call <see cref="SkipIfUnavailable"/> (CPU) or <see cref="SkipIfNoCuda"/> first. TorchSharp loads
/// libtorch and its own libLibTorchSharp.so on first use; where that fails (no libtorch on the loader path, or a libstdc++
/// older than GLIBCXX_3.4.32, as on Debian 12) the test is reported as skipped with the loader's reason. The probe runs
/// once per process and its result is cached.
/// </summary>
internal static class TorchSharpRequirement
{
    private static readonly Lazy<string?> LoadFailure = new(ProbeLoad, LazyThreadSafetyMode.ExecutionAndPublication);
    private static readonly Lazy<string?> CudaFailure = new(ProbeCuda, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Skips the test when TorchSharp's native libraries cannot load on this machine.</summary>
    public static void SkipIfUnavailable()
    {
        if (LoadFailure.Value is { } reason)
            Assert.Skip(reason);
    }

    /// <summary>Skips unless TorchSharp loads, torch sees a CUDA device, and our CUDA path has a usable GPU (driver, NVRTC, sm_80+).</summary>
    public static CudaDevice SkipIfNoCuda()
    {
        SkipIfUnavailable();
        if (CudaFailure.Value is { } reason)
            Assert.Skip(reason);
        if (!CudaDevice.TryGetDefault(out CudaDevice? device, out string why))
            Assert.Skip("torch sees a CUDA device but FlashAttention.NET's CUDA path cannot use it: " + why);
        return device;
    }

    private static string? ProbeLoad()
    {
        try
        {
            using var probe = torch.zeros(1);
            return null;
        }
        catch (Exception e) when (e is TypeInitializationException or DllNotFoundException or EntryPointNotFoundException
                                      or BadImageFormatException or NotSupportedException)
        {
            var cause = e;
            while (cause.InnerException is not null)
                cause = cause.InnerException;
            // TorchSharp's message goes on with a long load trace; its first sentence says what failed.
            string firstLine = cause.Message.Split('\n', 2)[0].Trim();
            int sentenceEnd = firstLine.IndexOf(". ", StringComparison.Ordinal);
            if (sentenceEnd > 0)
                firstLine = firstLine[..(sentenceEnd + 1)];
            return "TorchSharp's native libraries cannot load here (libtorch 2.10+ on the loader path, e.g. LD_LIBRARY_PATH=" +
                   "<site-packages>/torch/lib, and libLibTorchSharp.so, which needs GLIBCXX_3.4.32 / glibc 2.38+): " +
                   $"{cause.GetType().Name}: {firstLine}";
        }
    }

    private static string? ProbeCuda()
    {
        try
        {
            return torch.cuda.is_available() ? null : "torch sees no CUDA device (torch.cuda.is_available() is false; is libtorch_cuda.so on the loader path?).";
        }
        catch (Exception e)
        {
            return $"torch's CUDA backend does not load: {e.GetType().Name}: {e.Message.Split('\n', 2)[0].Trim()}";
        }
    }
}

/// <summary>Small helpers over torch tensors for the tests.</summary>
internal static class TorchTest
{
    /// <summary>A float32 tensor of standard normal samples (never exactly zero) from the test's seeded random source.</summary>
    public static torch.Tensor Normal(TestRandom random, long[] shape, torch.ScalarType dtype = torch.ScalarType.Float32,
        torch.Device? device = null, float std = 1f)
    {
        long count = 1;
        foreach (long length in shape)
            count *= length;
        using var host = torch.tensor(random.Normal(count, std), shape);
        return host.to(dtype, device ?? torch.CPU);
    }

    /// <summary>The tensor's values as doubles, in row-major order.</summary>
    public static double[] Values(torch.Tensor tensor)
    {
        using var dense = tensor.detach().to(torch.ScalarType.Float64, torch.CPU).contiguous();
        return dense.data<double>().ToArray();
    }

    /// <summary>A leaf copy of <paramref name="tensor"/> in <paramref name="dtype"/> that requires grad.</summary>
    public static torch.Tensor Leaf(torch.Tensor tensor, torch.ScalarType dtype) =>
        tensor.detach().to(dtype).clone().requires_grad_(true);

    public static string Shape(torch.Tensor tensor) => "(" + string.Join(", ", tensor.shape) + ")";

    public static void AssertFinite(string what, torch.Tensor tensor)
    {
        Assert.NotNull(tensor);
        double[] values = Values(tensor);
        int bad = Array.FindIndex(values, x => !double.IsFinite(x));
        Assert.True(bad < 0, $"{what} {Shape(tensor)} has a non-finite element at {bad}: {(bad >= 0 ? values[bad] : 0)}");
    }
}

/// <summary>Unfused attention in torch, differentiable by torch's own autograd: the reference the adapter is held to.</summary>
internal static class TorchReference
{
    /// <summary>
    /// softmax(q k^T * scale + mask) v in the dtype of the inputs, flash-attn's layout (batch, seqlen, heads, headdim);
    /// k and v heads are repeated for GQA; the causal mask is aligned to the bottom-right corner. Rows that see no key
    /// give NaN here, so tests keep seqlen_q &lt;= seqlen_k when causal.
    /// </summary>
    public static torch.Tensor Attention(torch.Tensor q, torch.Tensor k, torch.Tensor v, bool causal, double? scale = null)
    {
        long headsQ = q.shape[2], headsKv = k.shape[2], seqlenQ = q.shape[1], seqlenK = k.shape[1];
        if (headsQ != headsKv)
        {
            k = k.repeat_interleave(headsQ / headsKv, 2);
            v = v.repeat_interleave(headsQ / headsKv, 2);
        }
        var qt = q.transpose(1, 2);
        var kt = k.transpose(1, 2);
        var vt = v.transpose(1, 2);
        var scores = torch.matmul(qt, kt.transpose(-2, -1)).mul(scale ?? 1.0 / Math.Sqrt(q.shape[3]));
        if (causal)
        {
            using var mask = torch.ones(seqlenQ, seqlenK, torch.ScalarType.Bool, q.device).triu(seqlenK - seqlenQ + 1);
            scores = scores.masked_fill(mask, double.NegativeInfinity);
        }
        var probabilities = torch.softmax(scores, -1);
        return torch.matmul(probabilities, vt).transpose(1, 2);
    }
}

/// <summary>Fails the test when a backward recorded a failure in the adapter (the exception that libtorch's engine could not carry).</summary>
internal static class BackwardFailure
{
    public static void Run(Action backward)
    {
        FlashAttn.TorchSharp.FlashAttentionTorch.ClearLastBackwardException();
        try
        {
            backward();
        }
        catch (Exception e) when (FlashAttn.TorchSharp.FlashAttentionTorch.LastBackwardException is { } cause)
        {
            Assert.Fail($"backward failed inside the adapter (libtorch reported: {e.Message.Split('\n', 2)[0]}); the cause: {cause}");
        }
    }
}
