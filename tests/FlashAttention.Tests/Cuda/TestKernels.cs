using System.Runtime.InteropServices;
using FlashAttn.Cuda;

namespace FlashAttn.Tests.Cuda;

/// <summary>Small kernels for testing the runtime layer: an element-wise c = a + SCALE * b, in two calling conventions.</summary>
internal static class TestKernels
{
    public const string ParamsHeader = """
        #pragma once
        struct AddParams { const float* a; const float* b; float* c; int n; };
        #ifndef SCALE
        #define SCALE 1
        #endif
        """;

    public const string VectorAdd = """
        #include "add_params.cuh"
        extern "C" __global__ void vadd(const float* a, const float* b, float* c, int n) {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) c[i] = a[i] + SCALE * b[i];
        }
        extern "C" __global__ void vadd_params(AddParams p) {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < p.n) p.c[i] = p.a[i] + SCALE * p.b[i];
        }
        """;

    public static KernelSource Source { get; } =
        new("vector_add.cu", VectorAdd, new Dictionary<string, string> { ["add_params.cuh"] = ParamsHeader });

    /// <summary>Mirror of AddParams: three pointers and an int (32 bytes with padding on both sides).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct AddParams
    {
        public nint A, B, C;
        public int N;
    }

    /// <summary>A host tensor's elements in row-major order.</summary>
    public static T[] Flat<T>(Tensor<T> tensor)
    {
        var flat = new T[tensor.FlattenedLength];
        tensor.FlattenTo(flat);
        return flat;
    }

    /// <summary>Runs vadd_params from <paramref name="cache"/> on fresh random inputs and checks c = fma(scale, b, a) exactly.</summary>
    public static void RunAndCheck(ModuleCache cache, CudaDevice device, int scale = 1, int n = 1000, CudaStream? stream = null)
    {
        var kernel = cache.GetOrCompile(Source, "vadd_params", $"vadd_scale{scale}", [$"-DSCALE={scale}"], device);
        var random = new Random();
        float[] a = Enumerable.Range(0, n).Select(_ => (float)random.NextDouble() + 0.5f).ToArray();
        float[] b = Enumerable.Range(0, n).Select(_ => (float)random.NextDouble() - 1.5f).ToArray();
        using var da = CudaTensor<float>.FromHost(a);
        using var db = CudaTensor<float>.FromHost(b);
        using var dc = CudaTensor<float>.Allocate([n]);
        dc.Fill(0xFF);
        var p = new AddParams { A = da.DevicePointer, B = db.DevicePointer, C = dc.DevicePointer, N = n };
        stream ??= CudaStream.Legacy;
        kernel.Launch(p, ((uint)((n + 127) / 128), 1, 1), (128, 1, 1), 0, stream);
        float[] c = Flat(dc.ToHost(stream));
        // NVRTC contracts a + SCALE * b into one fused multiply-add (--fmad=true is the default): one rounding.
        for (int i = 0; i < n; i++)
            Assert.Equal(MathF.FusedMultiplyAdd(scale, b[i], a[i]), c[i]);
    }
}
