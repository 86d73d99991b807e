using System.CommandLine;

namespace FlashAttn.Cli.Commands;

/// <summary>`flash-attn all`: the main job of a fresh machine: `check`, then `bench` with its defaults
/// (on the GPU when there is one, else on the CPU path, which it says).</summary>
internal static class AllCommand
{
    public static Command Create(Func<RootCommand> root)
    {
        var command = new Command("all", "Self-check every execution path, then run the default benchmark.");
        command.SetGuardedAction((_, _) =>
        {
            int checkResult = root().Parse(["check"]).Invoke();
            return checkResult != 0 ? checkResult : root().Parse(["bench"]).Invoke();
        });
        return command;
    }
}
