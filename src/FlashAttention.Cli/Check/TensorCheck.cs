namespace FlashAttn.Cli.Check;

/// <summary>
/// The comparison of one output tensor with the float64 oracle, by flash-attn's rule (DESIGN.md "Tests"):
/// max|impl - ref64| &lt;= 2 * max|naive_P - ref64| + u * max(1, max|ref64|), u from
/// <see cref="ElementTypes.ToleranceFloorUnit"/>.
/// Equal infinities (the +inf LSE of a row that sees no key) count as exact; NaN or a mismatched infinity fails.
/// </summary>
internal sealed record TensorCheck(string Tensor, double MaxError, double MeanError, double Tolerance, int WorstIndex,
    double NaiveError, double MaxReference)
{
    public bool Passed => MaxError <= Tolerance;

    /// <summary>How close to failing: error / tolerance.</summary>
    public double Ratio => Tolerance > 0 ? MaxError / Tolerance : double.PositiveInfinity;

    public static TensorCheck Compare(string tensor, double[] impl, double[] reference, double[] naive, double floorUnit)
    {
        double maxError = 0, sumError = 0, naiveError = 0, maxReference = 0;
        int worst = -1;
        for (int i = 0; i < reference.Length; i++)
        {
            double error = Distance(impl[i], reference[i]);
            sumError += double.IsFinite(error) ? error : 0;
            if (error > maxError || double.IsNaN(error) && !double.IsNaN(maxError))
            {
                maxError = double.IsNaN(error) ? double.NaN : error;
                worst = i;
            }
            naiveError = Math.Max(naiveError, Distance(naive[i], reference[i]));
            if (double.IsFinite(reference[i])) maxReference = Math.Max(maxReference, Math.Abs(reference[i]));
        }
        double tolerance = 2 * naiveError + floorUnit * Math.Max(1, maxReference);
        return new(tensor, double.IsNaN(maxError) ? double.PositiveInfinity : maxError,
            reference.Length == 0 ? 0 : sumError / reference.Length, tolerance, worst, naiveError, maxReference);
    }

    private static double Distance(double x, double reference) =>
        x == reference ? 0 : double.IsNaN(x) ? double.NaN : Math.Abs(x - reference);
}
