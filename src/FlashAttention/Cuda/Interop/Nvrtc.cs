using System.Runtime.InteropServices;

namespace FlashAttn.Cuda.Interop;

/// <summary>
/// NVRTC imports (libnvrtc.so.13 or .so.12, found by <see cref="NativeLibraryResolver"/>). nvrtcProgram is an opaque
/// pointer; string arrays are passed as arrays of UTF-8 pointers (<see cref="Utf8StringArray"/>).
/// </summary>
internal static unsafe partial class Nvrtc
{
    internal const string Library = NativeLibraryResolver.NvrtcLogicalName;

    static Nvrtc() => NativeLibraryResolver.EnsureRegistered();

    [LibraryImport(Library)] internal static partial NvrtcResult nvrtcVersion(out int major, out int minor);

    [LibraryImport(Library)]
    internal static partial NvrtcResult nvrtcCreateProgram(out nint program, byte* source, byte* name, int numHeaders, byte** headers, byte** includeNames);

    [LibraryImport(Library)] internal static partial NvrtcResult nvrtcCompileProgram(nint program, int numOptions, byte** options);
    [LibraryImport(Library)] internal static partial NvrtcResult nvrtcGetProgramLogSize(nint program, out nuint logSize);
    [LibraryImport(Library)] internal static partial NvrtcResult nvrtcGetProgramLog(nint program, byte* log);
    [LibraryImport(Library)] internal static partial NvrtcResult nvrtcGetCUBINSize(nint program, out nuint cubinSize);
    [LibraryImport(Library)] internal static partial NvrtcResult nvrtcGetCUBIN(nint program, byte* cubin);
    [LibraryImport(Library)] internal static partial NvrtcResult nvrtcDestroyProgram(ref nint program);

    /// <summary>A static string owned by NVRTC.</summary>
    [LibraryImport(Library)] internal static partial nint nvrtcGetErrorString(NvrtcResult result);
}
