using System.Text.Json.Nodes;
using FlashAttn.Cli.Bench;
using FlashAttn.Cuda;
using FlashAttn.Cuda.Interop;
using Spectre.Console;

namespace FlashAttn.Cli.Gpu;

/// <summary>
/// The KV-cache decoding part of `flash-attn bench` on a GPU (issue 6): the copy bandwidth, then our
/// <see cref="FlashAttention.ForwardWithKvCacheInto{T}"/> on <see cref="DecodeCase.Standard"/> (contiguous and paged caches),
/// each timed back to back over buffer sets that exceed the L2 cache, then PyTorch SDPA on the contiguous shapes
/// (bench/peers/torch_decode.py) in the same invocation. Rows carry op "decode" and are saved with the sweep.
/// </summary>
internal static class DecodeBench
{
    public const string PeerScriptName = "torch_decode.py";

    /// <summary>H100's L2, for a driver that does not report one.</summary>
    private const long FallbackL2Bytes = 50L << 20;

    /// <summary>The decode peer script next to the attention one (bench/peers/torch_sdpa.py -> bench/peers/torch_decode.py).</summary>
    public static string PeerScriptBeside(string attentionPeerScript) =>
        Path.Combine(Path.GetDirectoryName(attentionPeerScript) is { Length: > 0 } folder ? folder : ".", PeerScriptName);

    public static List<BenchRow> Run(CudaDevice device, CudaStream stream, string peerScript, string run, int splits, CancellationToken ct)
    {
        var cases = DecodeCase.Standard().ToList();
        var rows = new List<BenchRow>();
        var skipped = new List<(string Label, string Reason)>();
        long l2 = L2Bytes(device);
        double copy = CopyBandwidth.MeasureTbps(device, stream);
        AnsiConsole.MarkupLine($"Decode: copy bandwidth {copy:0.00} TB/s (read + write, {CopyBandwidth.Bytes >> 30} GiB); buffers rotated over {DecodeCase.RotationL2Multiple} x L2 ({l2 >> 20} MiB)");
        var random = new Random(2468);
        AnsiConsole.Progress().AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("decode", maxValue: cases.Count);
                foreach (var c in cases)
                {
                    ct.ThrowIfCancellationRequested();
                    task.Description = c.Label;
                    try
                    {
                        rows.Add(Measure(c, device, stream, random, l2, copy, run, splits));
                    }
                    catch (Exception error) when (error is NotSupportedException or NotImplementedException or ArgumentException or CudaException)
                    {
                        // A shape the kernels do not take, or do not take yet, or that does not fit: the other rows still count.
                        skipped.Add((c.Label, error.Message));
                    }
                    task.Increment(1);
                }
            });
        // One line per distinct reason: an unimplemented path fails every row the same way.
        foreach (var reason in skipped.GroupBy(s => s.Reason))
            AnsiConsole.MarkupLine($"[yellow]skipped {reason.Count()} decode row(s)[/] ({Markup.Escape(string.Join("; ", reason.Select(s => s.Label).Take(3)))}{(reason.Count() > 3 ? "; ..." : "")}): {Markup.Escape(reason.Key)}");

        AnsiConsole.MarkupLine("Running the PyTorch decode peers on the contiguous shapes...");
        var shapes = new JsonArray([.. cases.Where(c => c.Layout == DecodeLayout.Contiguous).Select(c => (JsonNode)c.ToPeerShape())]);
        var peers = TorchPeers.Run(peerScript, shapes, run, TimeSpan.FromMinutes(5));
        if (peers.Note is not null) AnsiConsole.MarkupLine($"[yellow]note:[/] {Markup.Escape(peers.Note)}");
        rows.AddRange(peers.Rows.Select(DecodeRows.FromPeer));
        AnsiConsole.Write(DecodeTable.Build(rows, copy));
        return rows;
    }

    private static BenchRow Measure(DecodeCase c, CudaDevice device, CudaStream stream, Random random, long l2, double copy, string run, int splits)
    {
        using var work = new DecodeWorkload(c, c.BufferSets(l2), device, stream, random);
        var (ms, _, repeats) = GpuTimer.BackToBack(work.Launch(stream, splits), stream, minCalls: work.Sets);
        return DecodeRows.Ours(c, ms, repeats, copy, device.Name, run);
    }

    /// <summary>The device's L2 size from the driver, else <see cref="FallbackL2Bytes"/>.</summary>
    private static long L2Bytes(CudaDevice device)
    {
        device.MakeCurrent();
        return CudaDriver.cuDeviceGet(out int handle, device.Ordinal) == CudaResult.Success
            && CudaDriver.cuDeviceGetAttribute(out int bytes, CuDeviceAttribute.L2CacheSize, handle) == CudaResult.Success && bytes > 0
            ? bytes : FallbackL2Bytes;
    }
}
