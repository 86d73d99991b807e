using System.CommandLine;
using FlashAttn.Cuda;
using Spectre.Console;

namespace FlashAttn.Cli.Commands;

/// <summary>`flash-attn warmup`: precompiles the common CUDA kernel variants into the disk cache.</summary>
internal static class WarmupCommand
{
    public static Command Create()
    {
        var all = new Option<bool>("--all") { Description = "Compile every variant the library can launch (each dropout, softcap, ALiBi and deterministic combination), not only the common ones." };
        var command = new Command("warmup", "Compile the common CUDA kernel variants with NVRTC into the disk cache (FLASHATTN_CACHE_DIR).") { all };
        command.SetGuardedAction((parseResult, _) =>
        {
            if (!CudaDevice.TryGetDefault(out var device, out string reason))
            {
                AnsiConsole.MarkupLine($"[yellow]note:[/] no CUDA GPU, nothing to compile: {Markup.Escape(ExecutionPaths.FirstSentence(reason))}.");
                return 0;
            }
            AnsiConsole.MarkupLine($"Compiling for {Markup.Escape(device!.Name)} ({device.Architecture}) into {Markup.Escape(ModuleCache.Shared.CacheDirectory)}");
            var table = new Table().AddColumns("variant", "registers", "spilled bytes", "ms");
            foreach (var v in KernelWarmup.Run(device, parseResult.GetValue(all)))
                table.AddRow(v.Name, v.Registers.ToString(), v.LocalBytes.ToString(), v.Milliseconds.ToString("0"));
            AnsiConsole.Write(table);
            return 0;
        });
        return command;
    }
}
