using System.Runtime.InteropServices;

namespace FlashAttn.Cpu;

/// <summary>A native buffer of elements of the operand type (rotated q, gathered keys and values), freed deterministically;
/// native so the pointers handed to the attention kernels cannot move or be collected underneath them.</summary>
internal sealed unsafe class ElementBuffer<T> : IDisposable where T : unmanaged
{
    public T* Pointer { get; private set; }

    public ElementBuffer(long count) =>
        Pointer = (T*)NativeMemory.AlignedAlloc((nuint)Math.Max(1, count) * (nuint)sizeof(T), 64);

    public void Dispose()
    {
        if (Pointer != null) NativeMemory.AlignedFree(Pointer);
        Pointer = null;
    }
}
