using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests;

/// <summary>The tolerance helper itself: it accepts what the rule accepts and rejects the rest, infinities included.</summary>
public sealed class ToleranceTests
{
    private const double U = 1.0 / 2048;

    [Fact]
    public void AcceptsErrorsWithinTwiceTheNaiveErrorPlusTheFloor()
    {
        double[] reference = [1.0, -2.0, 0.5, double.PositiveInfinity];
        double[] naive = [1.01, -2.0, 0.5, double.PositiveInfinity];     // naive error 0.01
        double[] actual = [1.0, -2.02 - U, 0.5, double.PositiveInfinity]; // 0.02 + u * 2 allowed
        Tolerance.AssertClose("x", actual, reference, naive, U, "");
    }

    [Fact]
    public void RejectsErrorsBeyondTheBound()
    {
        double[] reference = [1.0, -2.0, 0.5];
        double[] naive = [1.01, -2.0, 0.5];
        double[] actual = [1.0, -2.0, 0.5 + 0.02 + 2.1 * U];
        var failure = Assert.ThrowsAny<Exception>(() => Tolerance.AssertClose("x", actual, reference, naive, U, "ctx"));
        Assert.Contains("first bad index 2", failure.Message);
        Assert.Contains("ctx", failure.Message);
    }

    [Theory]
    [InlineData(double.PositiveInfinity, 1.0)]
    [InlineData(1.0, double.PositiveInfinity)]
    [InlineData(1.0, double.NaN)]
    [InlineData(double.PositiveInfinity, double.NegativeInfinity)]
    public void NonFiniteValuesMustMatchExactly(double expected, double actual)
    {
        double[] reference = [0.25, expected], naive = [0.25, expected], impl = [0.25, actual];
        Assert.ThrowsAny<Exception>(() => Tolerance.AssertClose("x", impl, reference, naive, U, ""));
    }
}
