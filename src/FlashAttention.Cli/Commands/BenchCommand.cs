using System.CommandLine;
using FlashAttn.Cli.Bench;

namespace FlashAttn.Cli.Commands;

/// <summary>`flash-attn bench`: the options and how they become <see cref="BenchSettings"/>; the run itself is <see cref="BenchRun"/>.</summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var dtype = List("--dtype", "Element types: fp32, fp16, bf16; several allowed (default fp32).");
        var seqlens = List("--seqlens", "Sequence lengths, e.g. 512,1024 (default 512 1024 2048, plus 4096 for head dim 64).");
        var headdims = List("--headdims", "Head dims, e.g. 64,128 (default 64 128).");
        var batch = new Option<int?>("--batch") { Description = "Batch size (default 1)." };
        var heads = new Option<int?>("--heads") { Description = "Heads; heads_kv = heads (default 8)." };
        var causal = new Option<string?>("--causal") { Description = "Causal mask: both, on or off (default both)." };
        causal.AcceptOnlyFromAmong("both", "on", "off");
        var modes = List("--modes", "Modes: fwd, bwd, fwdbwd (default fwd fwdbwd).");
        var repeats = new Option<int?>("--repeats") { Description = "Timed runs per row after a 0.5 s warm-up; the median is reported (default 5; at most 3 when one run takes over 2 s)." };
        var naiveMax = new Option<int?>("--naive-max-seqlen") { HelpName = "seqlen", Description = "Also time the unfused naive baseline up to this seqlen; 0 disables (default 2048)." };
        var quick = new Option<bool>("--quick") { Description = "Smoke test: one small shape (b1 h4 s256 d64, non-causal), 3 repeats; results are written only with --out." };
        var output = new Option<string?>("--out") { Description = "Results folder (default bench/results)." };
        var plot = new Option<string?>("--plot") { Description = "PNG plot path (default <out>/<device>.png)." };
        var cpu = new Option<bool>("--cpu") { Description = "Benchmark the CPU path even when a CUDA GPU is present." };
        var cpuPeerShapes = new Option<bool>("--cpu-peer-shapes")
        {
            Description = "CPU: the shapes of the comparison with PyTorch's CPU attention (issue 7): b1 h8, s2048 d128 and s4096 d64, causal and not, " +
                "fp32 and bf16, fwd and fwdbwd. Implies --cpu; the naive baseline is left out unless --naive-max-seqlen is given; the other sweep options do not apply.",
        };
        var peers = new Option<string?>("--peers")
        {
            Description = "The GPU's PyTorch peer script (default bench/peers/torch_sdpa.py); the decode rows' peer is torch_decode.py beside it, " +
                "and the CPU bench's (impl torch-cpu, PyTorch SDPA on CPU tensors with one thread per logical core) torch_cpu.py.",
        };
        var noUnfused = new Option<bool>("--no-unfused") { Description = "GPU: leave out the unfused (materialised) baseline." };
        var features = List("--features", "GPU: run only these feature rows (softcap, alibi, dropout, gqa, packed-qkv, window, varlen), with their baselines (default all).");
        var noFeatures = new Option<bool>("--no-features") { Description = "GPU: leave out the feature-overhead rows (softcap, ALiBi, dropout, GQA, packed QKV, windows, varlen)." };
        var noDecode = new Option<bool>("--no-decode") { Description = "GPU: leave out the KV-cache decoding rows (bf16, h32/kv8, d128, batch 1-64, cache 1k-128k; --quick leaves them out too)." };
        var decodeSplits = new Option<int?>("--decode-splits") { HelpName = "splits", Description = "GPU: KV-cache splits for the decoding rows (KvCacheOptions.NumSplits; default 0 = the library's choice), for tuning." };
        var decodeOnly = new Option<bool>("--decode-only") { Description = "GPU: run only the KV-cache decoding rows (contiguous and paged caches) and their PyTorch peers, about a minute; the sweep options do not apply." };

        var command = new Command("bench", "Benchmark the attention paths over a sweep of shapes; write results JSON and a PNG plot.")
        {
            dtype, seqlens, headdims, batch, heads, causal, modes, repeats, naiveMax, quick, output, plot, cpu, cpuPeerShapes, peers, noUnfused,
            features, noFeatures, noDecode, decodeOnly, decodeSplits,
        };
        command.SetGuardedAction((parseResult, ct) =>
        {
            bool isQuick = parseResult.GetValue(quick);
            string[]? Tokens(Option<string[]> option) => parseResult.GetValue(option) is { Length: > 0 } t ? t : null;

            var types = Tokens(dtype) is { } d ? BenchSettings.ParseNames(d, "--dtype", ElementTypes.Names).Select(ElementTypes.Parse).ToList() : [ElementType.Fp32];
            int[]? dims = Tokens(headdims) is { } h ? BenchSettings.ParseInts(h, "--headdims", 1, 256) : null;
            int[]? lengths = Tokens(seqlens) is { } s ? BenchSettings.ParseInts(s, "--seqlens", 1, 1 << 20) : null;
            IReadOnlyList<(int, IReadOnlyList<int>)> shapes = (dims, lengths, isQuick) switch
            {
                (null, null, false) => [.. BenchSettings.DefaultShapes.Select(x => (x.HeadDim, (IReadOnlyList<int>)x.Seqlens))],
                _ => [.. (dims ?? (isQuick ? [BenchSettings.QuickHeadDim] : BenchSettings.DefaultShapes.Select(x => x.HeadDim).ToArray()))
                    .Select(hd => (hd, (IReadOnlyList<int>)(lengths ?? (isQuick ? [BenchSettings.QuickSeqlen] : DefaultSeqlens(hd)))))],
            };
            string causalChoice = parseResult.GetValue(causal) ?? (isQuick ? "off" : "both");
            string? outDir = parseResult.GetValue(output) ?? (isQuick ? null : Path.Combine("bench", "results"));
            bool[] causalFlags = causalChoice switch { "on" => [true], "off" => [false], _ => [false, true] };
            bool onlyDecode = parseResult.GetValue(decodeOnly);
            bool peerShapes = parseResult.GetValue(cpuPeerShapes);
            if (onlyDecode && (isQuick || parseResult.GetValue(noDecode) || parseResult.GetValue(cpu) || peerShapes))
                throw new CliException("--decode-only runs the GPU decoding rows alone; it does not combine with --quick, --no-decode, --cpu or --cpu-peer-shapes.");
            if (peerShapes && (isQuick || Tokens(dtype) is not null || dims is not null || lengths is not null || parseResult.GetValue(batch) is not null
                || parseResult.GetValue(heads) is not null || parseResult.GetValue(causal) is not null || Tokens(modes) is not null))
                throw new CliException("--cpu-peer-shapes fixes the shapes; it does not combine with --quick, --dtype, --seqlens, --headdims, --batch, --heads, --causal or --modes.");
            string gpuPeerScript = parseResult.GetValue(peers) ?? Path.Combine("bench", "peers", "torch_sdpa.py");

            if (!parseResult.GetValue(cpu) && !peerShapes && ExecutionPaths.Available.OfType<CudaPath>().FirstOrDefault() is { } gpu)
            {
                var gpuTypes = Tokens(dtype) is { } g ? BenchSettings.ParseNames(g, "--dtype", ["fp16", "bf16"]) : ["bf16"];
                var gpuSettings = new Gpu.GpuBenchRun.Settings(
                    gpuTypes,
                    dims ?? (isQuick ? [128] : [64, 128, 256]),
                    lengths ?? (isQuick ? [1024] : [512, 1024, 2048, 4096, 8192, 16384]),
                    causalFlags,
                    Tokens(modes) is { } gm ? BenchSettings.ParseNames(gm, "--modes", BenchCase.Modes) : isQuick ? ["fwd"] : ["fwd", "fwdbwd"],
                    outDir,
                    parseResult.GetValue(plot),
                    gpuPeerScript,
                    !parseResult.GetValue(noUnfused),
                    SeedMemory: !isQuick,
                    Features: !isQuick && !parseResult.GetValue(noFeatures),
                    Decode: !isQuick && !parseResult.GetValue(noDecode),
                    DecodeOnly: onlyDecode,
                    DecodeSplits: parseResult.GetValue(decodeSplits) ?? 0,
                    FeatureFilter: Tokens(features) is { } f ? BenchSettings.ParseNames(f, "--features", Gpu.FeatureCase.Features) : null);
                return Gpu.GpuBenchRun.Execute(gpu.Device, gpuSettings, ct);
            }
            if (onlyDecode)
                throw new CliException("--decode-only needs a CUDA GPU; none is available here (`flash-attn check` says why).");

            if (peerShapes)
            {
                types = [.. BenchSettings.CpuPeerTypes];
                shapes = [.. BenchSettings.CpuPeerShapes.Select(x => (x.HeadDim, (IReadOnlyList<int>)x.Seqlens))];
            }
            var settings = new BenchSettings
            {
                DTypes = types,
                Shapes = shapes,
                Batch = peerShapes ? BenchSettings.CpuPeerBatch : Positive(parseResult.GetValue(batch) ?? 1, "--batch"),
                Heads = peerShapes ? BenchSettings.CpuPeerHeads : Positive(parseResult.GetValue(heads) ?? (isQuick ? BenchSettings.QuickHeads : 8), "--heads"),
                Causal = causalFlags,
                Modes = Tokens(modes) is { } m ? BenchSettings.ParseNames(m, "--modes", BenchCase.Modes) : ["fwd", "fwdbwd"],
                Repeats = Positive(parseResult.GetValue(repeats) ?? (isQuick ? BenchSettings.QuickRepeats : 5), "--repeats"),
                NaiveMaxSeqlen = parseResult.GetValue(naiveMax) ?? (peerShapes ? 0 : 2048),
                OutputDirectory = outDir,
                PlotPath = parseResult.GetValue(plot),
                Quick = isQuick,
                CpuRequested = parseResult.GetValue(cpu) || peerShapes,
                TorchPeerScript = CpuPeer.ScriptBeside(gpuPeerScript),
            };
            return BenchRun.Execute(settings, ct);
        });
        return command;
    }

    private static int[] DefaultSeqlens(int headDim) =>
        BenchSettings.DefaultShapes.FirstOrDefault(x => x.HeadDim == headDim).Seqlens ?? [512, 1024, 2048];

    private static Option<string[]> List(string name, string description) =>
        new(name) { Description = description, AllowMultipleArgumentsPerToken = true };

    private static int Positive(int value, string option) =>
        value >= 1 ? value : throw new CliException($"{option} must be at least 1; got {value}.");
}
