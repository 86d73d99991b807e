using System.Runtime.InteropServices;

namespace FlashAttn.Cuda.Interop;

/// <summary>
/// A native <c>const char* const*</c>: NUL-terminated UTF-8 copies of the strings and an array of pointers to them,
/// freed on <see cref="Dispose"/>. Used for NVRTC's headers, include names and options.
/// </summary>
internal sealed unsafe class Utf8StringArray : IDisposable
{
    private byte** _pointers;
    private readonly int _count;

    public Utf8StringArray(IReadOnlyList<string> strings)
    {
        ArgumentNullException.ThrowIfNull(strings);
        _count = strings.Count;
        _pointers = (byte**)NativeMemory.AllocZeroed((nuint)Math.Max(_count, 1), (nuint)sizeof(byte*));
        try
        {
            for (int i = 0; i < _count; i++)
                _pointers[i] = (byte*)Marshal.StringToCoTaskMemUTF8(strings[i] ?? throw new ArgumentException($"Element {i} is null.", nameof(strings)));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Number of strings.</summary>
    public int Count => _count;

    /// <summary>The pointer array (null when there are no strings, as NVRTC accepts).</summary>
    public byte** Pointer => _count == 0 ? null : _pointers;

    public void Dispose()
    {
        if (_pointers == null)
            return;
        for (int i = 0; i < _count; i++)
            if (_pointers[i] != null)
                Marshal.FreeCoTaskMem((nint)_pointers[i]);
        NativeMemory.Free(_pointers);
        _pointers = null;
    }
}
