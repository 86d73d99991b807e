using System.Numerics.Tensors;

namespace FlashAttn.Cpu;

/// <summary>Conversions between the element types (float, Half, BFloat16) and the fp32 the tiles compute in.
/// The typeof tests are constants per instantiation, so the JIT keeps one branch.</summary>
internal static unsafe class Elements
{
    public static void ToFloat<T>(T* source, float* destination, int count) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
            new ReadOnlySpan<float>(source, count).CopyTo(new Span<float>(destination, count));
        else if (typeof(T) == typeof(Half))
            TensorPrimitives.ConvertToSingle(new ReadOnlySpan<Half>(source, count), new Span<float>(destination, count));
        else
        {
            var bits = (ushort*)source;
            for (int i = 0; i < count; i++) destination[i] = BitConverter.UInt32BitsToSingle((uint)bits[i] << 16);
        }
    }

    public static void FromFloat<T>(float* source, T* destination, int count) where T : unmanaged
    {
        if (typeof(T) == typeof(float))
            new ReadOnlySpan<float>(source, count).CopyTo(new Span<float>(destination, count));
        else if (typeof(T) == typeof(Half))
            TensorPrimitives.ConvertToHalf(new ReadOnlySpan<float>(source, count), new Span<Half>(destination, count));
        else
        {
            var target = (BFloat16*)destination;
            for (int i = 0; i < count; i++) target[i] = (BFloat16)source[i];
        }
    }

    /// <summary>Unit roundoff of the element type: 2^-24 (fp32), 2^-11 (fp16), 2^-8 (bf16).</summary>
    public static double UnitRoundoff<T>() =>
        typeof(T) == typeof(float) ? Math.Pow(2, -24) : typeof(T) == typeof(Half) ? Math.Pow(2, -11) : Math.Pow(2, -8);
}
