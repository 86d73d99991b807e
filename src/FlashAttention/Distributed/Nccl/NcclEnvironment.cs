using System.Runtime.InteropServices;

namespace FlashAttn.Distributed;

/// <summary>
/// The process environment NCCL reads when a communicator is created. NCCL calls getenv, which sees the native
/// environment; .NET's Environment.SetEnvironmentVariable changes only the managed copy on Linux, so this writes both.
/// </summary>
internal static partial class NcclEnvironment
{
    /// <summary>NVLink SHARP (multicast) off: the GPU machines this project runs on do not support it, and NCCL would
    /// otherwise try it on Hopper and fail to create communicators.</summary>
    public const string NvlsVariable = "NCCL_NVLS_ENABLE";

    /// <summary>Sets <see cref="NvlsVariable"/> to 0, whatever it was (called before every communicator is created).</summary>
    public static void DisableNvls() => Set(NvlsVariable, "0");

    /// <summary>Sets a variable in the managed and, on Linux and macOS, the native environment.</summary>
    public static void Set(string name, string value)
    {
        Environment.SetEnvironmentVariable(name, value);
        if (!OperatingSystem.IsWindows() && setenv(name, value, 1) != 0)
            throw new InvalidOperationException($"setenv({name}) failed: errno {Marshal.GetLastPInvokeError()}.");
    }

    /// <summary>The native environment's value (what NCCL's getenv sees); null when unset or on Windows.</summary>
    public static string? GetNative(string name) =>
        OperatingSystem.IsWindows() ? null : Marshal.PtrToStringUTF8(getenv(name));

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8, SetLastError = true)]
    private static partial int setenv(string name, string value, int overwrite);

    [LibraryImport("libc", StringMarshalling = StringMarshalling.Utf8)]
    private static partial nint getenv(string name);
}
