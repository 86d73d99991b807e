namespace FlashAttn.Cuda;

/// <summary>
/// With FLASHATTN_KERNEL_LOG set to a file path, the first launch of every kernel (per loaded module) appends one line
/// "variant kernel" to that file. scripts/sanitize.sh uses it to record which variants each sanitizer run launched (and so
/// checked); unset, nothing is written.
/// </summary>
internal static class KernelUseLog
{
    public const string Variable = "FLASHATTN_KERNEL_LOG";

    private static readonly string? s_path = Environment.GetEnvironmentVariable(Variable) is { Length: > 0 } path ? path : null;
    private static readonly Lock s_gate = new();

    public static void Record(string variantName, string kernelName)
    {
        if (s_path is null) return;
        lock (s_gate)
        {
            try { File.AppendAllText(s_path, variantName + " " + kernelName + Environment.NewLine); }
            catch (IOException) { }   // a diagnostic aid: never let it fail a launch
            catch (UnauthorizedAccessException) { }
        }
    }
}
