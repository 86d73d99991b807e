using System.Diagnostics;
using FlashAttn.Cuda;
using FlashAttn.Training.Model;
using FlashAttn.TorchSharp;
using TorchSharp;

namespace FlashAttn.Training;

/// <summary>
/// Trains a <see cref="LlamaModel"/> on CUDA for issue 8's comparison of attention implementations: AdamW (betas 0.9/0.95,
/// weight decay 0.1, constant learning rate), bf16 mixed precision, no activation checkpointing, next-token cross-entropy.
/// </summary>
/// <remarks>
/// <para><b>Mixed precision.</b> TorchSharp 0.107 has no autocast, so the scheme is the explicit one: the model's parameters
/// and activations are bfloat16 (forward and backward run in bf16; RMSNorm statistics, the unfused softmax and the loss
/// in fp32), and <see cref="MixedPrecisionAdamW"/> keeps an fp32 master copy and fp32 moments per parameter, updates the
/// masters from the bf16 gradients read as fp32, and copies them back into the bf16 parameters: 16 bytes per parameter.</para>
/// <para><b>Loss.</b> The output head runs in bf16; its logits are cast to fp32 and the cross-entropy against the next
/// tokens (mean over batch x context positions) is computed in fp32.</para>
/// <para><b>Timing.</b> A step's <see cref="StepResult.Seconds"/> runs from the batch's upload to the device to
/// <c>torch.cuda.synchronize</c> after the optimizer update (forward, loss, backward, update); the host-side
/// <see cref="ITokenSource.Next"/> call is not included. <see cref="TrainResult.TokensPerSecond"/> is the tokens of the steps
/// after <see cref="TrainSettings.WarmupSteps"/> over their summed seconds (all steps when there are no others).</para>
/// <para><b>Peak memory.</b> TorchSharp exposes neither <c>torch.cuda.max_memory_allocated</c> nor <c>empty_cache</c>, so
/// <see cref="TrainResult.PeakMemoryBytes"/> comes from the driver: device-wide used memory (cuMemGetInfo) sampled after the
/// model is built and after each step's forward, backward and update, minus the used memory when the run started. Freed
/// tensors stay reserved in libtorch's caching allocator, so the samples see the high-water mark of what the allocator
/// reserved (PyTorch's <c>max_memory_reserved</c>, plus our kernels' workspace and modules); the run starts and ends by
/// emptying that cache (<see cref="TorchCudaMemory.ReleaseCachedBlocks"/>), so runs in one process do not see each other's
/// cache. Other processes on the GPU count too; -1 when our CUDA path cannot open the device to read its memory.</para>
/// <para><b>Out of memory</b> is a result, not an exception: the run stops, everything is freed (model, optimizer state,
/// the step's tensors, libtorch's cache) and the result says "out of memory at step N" (N the 0-based step that failed;
/// 0 also when the weights and optimizer state do not fit), so the caller can try the next configuration in the same
/// process.</para>
/// </remarks>
public static class Trainer
{
    /// <summary>AdamW's first-moment decay.</summary>
    public const double Beta1 = 0.9;

    /// <summary>AdamW's second-moment decay.</summary>
    public const double Beta2 = 0.95;

    /// <summary>AdamW's decoupled weight decay (matrices only).</summary>
    public const double WeightDecay = 0.1;

    /// <summary>AdamW's epsilon.</summary>
    public const double Epsilon = 1e-8;

    /// <summary>Builds the model of <paramref name="config"/> and trains it as <paramref name="settings"/> say, on CUDA.</summary>
    /// <param name="config">Model shape; its vocabulary must cover <paramref name="data"/>'s.</param>
    /// <param name="settings">Attention, batch, context, steps, seed, learning rate, dropout, warm-up steps.</param>
    /// <param name="data">Token batches: each call returns batch x (context + 1) ids.</param>
    /// <param name="progress">Told each step as it completes.</param>
    /// <param name="cancellationToken">Checked before each step; cancelling frees everything and throws.</param>
    /// <returns>The steps, throughput and peak memory; <see cref="TrainResult.Failure"/> set on out of memory.</returns>
    /// <exception cref="ArgumentException">Invalid shape or settings, or token ids outside the vocabulary.</exception>
    /// <exception cref="InvalidOperationException">libtorch sees no CUDA device.</exception>
    /// <exception cref="OperationCanceledException">The token was cancelled.</exception>
    public static TrainResult Run(LlamaConfig config, TrainSettings settings, ITokenSource data, IProgress<StepResult>? progress = null,
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(config);
        ArgumentNullException.ThrowIfNull(settings);
        ArgumentNullException.ThrowIfNull(data);
        Validate(config, settings, data);
        if (!torch.cuda.is_available())
            throw new InvalidOperationException("The trainer runs on CUDA, and libtorch sees no CUDA device (torch.cuda.is_available() is false).");

        CudaDevice? cudaDevice = CudaDevice.TryGetDefault(out var found, out _) ? found : null;
        var device = torch.device(DeviceType.CUDA, cudaDevice?.Ordinal ?? 0);
        int batch = settings.Batch, context = settings.Context;
        long tokensPerStep = (long)batch * context;

        TorchCudaMemory.ReleaseCachedBlocks(device);
        torch.cuda.synchronize(device);
        long baseline = TorchCudaMemory.UsedBytes(cudaDevice);
        long peak = baseline;
        void Sample()
        {
            long used = TorchCudaMemory.UsedBytes(cudaDevice);
            if (used > peak)
                peak = used;
        }
        long PeakDelta() => baseline < 0 ? -1 : Math.Max(0, peak - baseline);

        var steps = new List<StepResult>(settings.Steps);
        LlamaModel? model = null;
        MixedPrecisionAdamW? optimizer = null;
        int step = 0;
        try
        {
            model = new LlamaModel(config, context, settings.Attention, settings.Dropout, device, torch.ScalarType.BFloat16, settings.Seed);
            model.train();
            optimizer = new MixedPrecisionAdamW(model.named_parameters(), settings.LearningRate, Beta1, Beta2, Epsilon, WeightDecay);
            torch.cuda.synchronize(device);
            Sample();

            for (step = 0; step < settings.Steps; step++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                long[] ids = NextBatch(data, batch, context, config.VocabSize);
                var clock = Stopwatch.StartNew();
                double loss;
                using (var scope = torch.NewDisposeScope())
                {
                    var sequences = torch.tensor(ids, [batch, context + 1L], torch.ScalarType.Int64).to(device);
                    var inputs = sequences.narrow(1, 0, context);
                    var targets = sequences.narrow(1, 1, context).reshape(-1);

                    var logits = model.forward(inputs);
                    var logits32 = logits.view(-1, config.VocabSize).to(torch.ScalarType.Float32);
                    logits.Dispose(); // the cast keeps no reference to its input
                    var lossTensor = torch.nn.functional.cross_entropy(logits32, targets);
                    logits32.Dispose(); // log-softmax keeps its output, not its input
                    Sample();

                    FlashAttentionTorch.ClearLastBackwardException();
                    lossTensor.backward();
                    Sample();
                    optimizer.Step();
                    torch.cuda.synchronize(device);
                    loss = lossTensor.item<float>();
                }
                clock.Stop();
                Sample();
                var result = new StepResult(step, loss, clock.Elapsed.TotalSeconds, tokensPerStep);
                steps.Add(result);
                progress?.Report(result);
            }
            return new TrainResult(config, settings, steps, TokensPerSecond(steps, settings.WarmupSteps), PeakDelta(), null);
        }
        catch (Exception e) when (TorchCudaMemory.IsOutOfMemory(e))
        {
            Sample();
            return new TrainResult(config, settings, steps, TokensPerSecond(steps, settings.WarmupSteps), PeakDelta(),
                model is null || optimizer is null
                    ? "out of memory at step 0 (allocating the weights and optimizer state)"
                    : $"out of memory at step {step}");
        }
        finally
        {
            optimizer?.Dispose();
            model?.Dispose();
            TorchCudaMemory.ReleaseCachedBlocks(device);
        }
    }

    /// <summary>Tokens per second over the steps after <paramref name="warmupSteps"/> (all steps when there are no others; 0 without steps).</summary>
    internal static double TokensPerSecond(IReadOnlyList<StepResult> steps, int warmupSteps)
    {
        var timed = steps.Where(s => s.Step >= warmupSteps).ToList();
        if (timed.Count == 0)
            timed = [.. steps];
        double seconds = timed.Sum(s => s.Seconds);
        return seconds > 0 ? timed.Sum(s => (double)s.Tokens) / seconds : 0;
    }

    private static void Validate(LlamaConfig config, TrainSettings settings, ITokenSource data)
    {
        LlamaModel.Validate(config);
        if (!Enum.IsDefined(settings.Attention))
            throw new ArgumentException($"Unknown attention kind {settings.Attention}.", nameof(settings));
        if (settings.Batch < 1 || settings.Context < 1 || settings.Steps < 0 || settings.WarmupSteps < 0)
            throw new ArgumentException($"Batch and context must be positive, steps and warm-up steps non-negative: {settings}.", nameof(settings));
        if (!(settings.Dropout >= 0 && settings.Dropout < 1))
            throw new ArgumentException($"Dropout must be in [0, 1): {settings.Dropout}.", nameof(settings));
        if (!(settings.LearningRate >= 0) || double.IsInfinity(settings.LearningRate))
            throw new ArgumentException($"The learning rate must be finite and non-negative: {settings.LearningRate}.", nameof(settings));
        if (data.VocabSize > config.VocabSize)
            throw new ArgumentException($"The data's vocabulary ({data.VocabSize}) exceeds the model's ({config.VocabSize}).", nameof(data));
    }

    /// <summary>
    /// The next batch, checked on the host: an id outside the vocabulary would fail on the device as an assertion that
    /// poisons the CUDA context for the rest of the process, not as an exception.
    /// </summary>
    private static long[] NextBatch(ITokenSource data, int batch, int context, int vocabSize)
    {
        long[] ids = data.Next(batch, context) ?? throw new InvalidOperationException("The token source returned null.");
        long expected = (long)batch * (context + 1L);
        if (ids.LongLength != expected)
            throw new ArgumentException($"The token source returned {ids.LongLength} ids; expected batch x (context + 1) = {expected}.", nameof(data));
        for (long i = 0; i < ids.LongLength; i++)
        {
            if ((ulong)ids[i] >= (ulong)vocabSize)
                throw new ArgumentException($"Token id {ids[i]} at {i} is outside the vocabulary [0, {vocabSize}).", nameof(data));
        }
        return ids;
    }
}
