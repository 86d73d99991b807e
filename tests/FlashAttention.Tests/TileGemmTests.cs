using FlashAttn.Cpu;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>The CPU path's one matrix kernel against a naive triple loop, for the three ways it starts C and with A passed
/// as stored or transposed.</summary>
public sealed unsafe class TileGemmTests
{
    public static TheoryData<GemmInitCase, int, int, int, bool> Cases()
    {
        var data = new TheoryData<GemmInitCase, int, int, int, bool>();
        int w = TileGemm.Width;
        foreach (var init in Enum.GetValues<GemmInitCase>())
            foreach (bool transposedA in (bool[])[false, true])
            {
                if (transposedA && init == GemmInitCase.ScaleRows) continue; // MultiplyTransposedA has no row scale
                data.Add(init, 4, w, 1, transposedA);
                data.Add(init, 8, 4 * w, 13, transposedA);     // exactly one 4x4 register tile per row block
                data.Add(init, 12, 5 * w, 40, transposedA);    // one 4x4 tile plus a 4x1 remainder
                data.Add(init, 64, 64, 59, transposedA);
                data.Add(init, 64, 8 * w + w, 256, transposedA);
            }
        return data;
    }

    /// <summary>Mirror of the internal <see cref="GemmInit"/> (internal enums cannot appear in public theory signatures).</summary>
    public enum GemmInitCase
    {
        Overwrite,
        Accumulate,
        ScaleRows,
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void MatchesNaiveProduct(GemmInitCase initCase, int m, int n, int k, bool transposedA)
    {
        var init = (GemmInit)initCase;
        var seeded = new TestRandom();
        var random = seeded.Random;
        int lda = k + 3, ldb = n + TileGemm.Width, ldc = n + 2 * TileGemm.Width; // leading dimensions wider than the matrices
        float[] a = Fill(random, m * lda), b = Fill(random, k * ldb), c = Fill(random, m * ldc), scale = Fill(random, m);
        var expected = (float[])c.Clone();
        var magnitude = new double[m * ldc];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double sum = 0, absolute = 0;
                for (int p = 0; p < k; p++)
                {
                    sum += (double)a[i * lda + p] * b[p * ldb + j];
                    absolute += Math.Abs((double)a[i * lda + p] * b[p * ldb + j]);
                }
                double start = init switch { GemmInit.Overwrite => 0, GemmInit.Accumulate => c[i * ldc + j], _ => (double)scale[i] * c[i * ldc + j] };
                expected[i * ldc + j] = (float)(start + sum);
                magnitude[i * ldc + j] = absolute + Math.Abs(start);
            }

        if (transposedA)
        {
            // The same A stored as its transpose (k x m, leading dimension m + 5), as backward passes P and dS.
            int ldat = m + 5;
            var at = Fill(random, k * ldat);
            for (int i = 0; i < m; i++)
                for (int p = 0; p < k; p++) at[p * ldat + i] = a[i * lda + p];
            fixed (float* pat = at, pb = b, pc = c)
                TileGemm.MultiplyTransposedA(pat, ldat, pb, ldb, pc, ldc, m, n, k, init);
        }
        else
        {
            fixed (float* pa = a, pb = b, pc = c, ps = scale)
                TileGemm.Multiply(pa, lda, pb, ldb, pc, ldc, m, n, k, init, init == GemmInit.ScaleRows ? ps : null);
        }

        for (int i = 0; i < m; i++)
            for (int j = 0; j < ldc; j++)
            {
                float got = c[i * ldc + j], want = expected[i * ldc + j];
                if (j >= n)
                {
                    Assert.True(BitConverter.SingleToInt32Bits(got) == BitConverter.SingleToInt32Bits(want), $"C[{i},{j}] beyond n was written");
                    continue;
                }
                // Standard bound for a recursive fp32 dot product: (k + 2) u * sum|a_p b_p| (+ the start term and the final rounding).
                double tolerance = (k + 2) * Math.Pow(2, -24) * magnitude[i * ldc + j] + Math.Pow(2, -24) * Math.Abs(want);
                Assert.True(Math.Abs(got - want) <= tolerance, $"{init} m={m} n={n} k={k} transposedA={transposedA}: C[{i},{j}] = {got:R}, expected {want:R} [{seeded}]");
            }
    }

    private static float[] Fill(Random random, int count)
    {
        var values = new float[count];
        for (int i = 0; i < count; i++) values[i] = (float)(random.NextDouble() * 2 - 1);
        return values;
    }
}
