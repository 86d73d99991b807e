using FlashAttn.Validation;

namespace FlashAttn.Cpu;

/// <summary>
/// rotary_cos / rotary_sin, (seqlen_ro, rotary_dim / 2), and the rotation of one head vector by them: pair j of the first
/// rotary_dim dims, (2j, 2j + 1) interleaved or (j, j + rotary_dim / 2) GPT-NeoX style, becomes
/// (x0 cos - x1 sin, x0 sin + x1 cos) with cos[pos, j], sin[pos, j]. Computed in fp32 and rounded once to T, as flash-attn
/// stores the rotated keys in the cache and attends with the rotated q in the element type.
/// </summary>
internal readonly unsafe struct RotaryTable<T> where T : unmanaged
{
    private readonly T* _cos, _sin;
    private readonly nint _cosRowStride, _sinRowStride;
    private readonly int _pairs, _positions;
    private readonly bool _interleaved;

    public RotaryTable(T* cos, TensorArg cosArg, T* sin, TensorArg sinArg, bool interleaved)
    {
        _cos = cos;
        _sin = sin;
        _cosRowStride = cosArg.Strides[0];
        _sinRowStride = sinArg.Strides[0];
        _positions = cosArg.Length(0);
        _pairs = cosArg.Length(1);
        _interleaved = interleaved;
    }

    /// <summary>False for the default value (no rotary tensors given): <see cref="Apply"/> then only copies.</summary>
    public bool Enabled => _pairs > 0;

    /// <summary>Writes <paramref name="source"/> rotated at <paramref name="position"/> to <paramref name="destination"/>; dims past
    /// rotary_dim are copied unchanged. Positions past the table use its last row (flash-attn clamps them the same way).</summary>
    public void Apply(T* source, T* destination, int headDim, int position)
    {
        if (!Enabled)
        {
            new ReadOnlySpan<T>(source, headDim).CopyTo(new Span<T>(destination, headDim));
            return;
        }
        float* x = stackalloc float[headDim];
        float* cos = stackalloc float[_pairs];
        float* sin = stackalloc float[_pairs];
        int row = Math.Min(position, _positions - 1);
        Elements.ToFloat(source, x, headDim); // exact widening: the unrotated dims round-trip unchanged
        Elements.ToFloat(_cos + row * _cosRowStride, cos, _pairs);
        Elements.ToFloat(_sin + row * _sinRowStride, sin, _pairs);
        for (int j = 0; j < _pairs; j++)
        {
            int i0 = _interleaved ? 2 * j : j, i1 = _interleaved ? 2 * j + 1 : j + _pairs;
            float x0 = x[i0], x1 = x[i1];
            x[i0] = x0 * cos[j] - x1 * sin[j];
            x[i1] = x0 * sin[j] + x1 * cos[j];
        }
        Elements.FromFloat(x, destination, headDim);
    }
}
