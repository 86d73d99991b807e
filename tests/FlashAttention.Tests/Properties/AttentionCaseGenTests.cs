using CsCheck;
using FlashAttn.Tests.Infrastructure;

namespace FlashAttn.Tests.Properties;

/// <summary>
/// The generator itself: it produces only valid cases within its profile, and its distribution reaches every feature the
/// properties are meant to cover (a property whose generator never emits, say, a saturating softcap proves nothing about it).
/// </summary>
public sealed class AttentionCaseGenTests
{
    private const int Samples = 3000;

    public static TheoryData<string> Profiles =>
        new() { nameof(CaseProfile.CpuForward), nameof(CaseProfile.CpuBackward), nameof(CaseProfile.CudaForward), nameof(CaseProfile.CudaBackward) };

    private static CaseProfile Profile(string name) => name switch
    {
        nameof(CaseProfile.CpuForward) => CaseProfile.CpuForward,
        nameof(CaseProfile.CpuBackward) => CaseProfile.CpuBackward,
        nameof(CaseProfile.CudaForward) => CaseProfile.CudaForward,
        _ => CaseProfile.CudaBackward,
    };

    private static AttentionCase[] Draw(CaseProfile profile)
    {
        var gen = AttentionCaseGen.Cases(profile);
        return [.. PropertyRunner.CaseSeeds("generator coverage", PropertySettings.DefaultSeed, Samples).Select(seed => gen.Generate(PCG.Parse(seed), null, out _))];
    }

    [Theory]
    [MemberData(nameof(Profiles))]
    public void CasesAreValidAndWithinTheProfile(string profileName)
    {
        var profile = Profile(profileName);
        foreach (var c in Draw(profile))
        {
            var p = c.Problem;
            string context = c.ToString();
            Assert.True(p.HeadsKv is >= 1 and <= 4 && p.HeadsQ % p.HeadsKv == 0, context);
            Assert.True(p.Batch is >= 0 and <= 3 && p.SeqlenQ <= profile.MaxSeqlen && p.SeqlenK <= profile.MaxSeqlen, context);
            Assert.True(p.HeadDim >= 1 && p.HeadDim <= profile.MaxHeadDim, context);
            Assert.True(c.Work <= profile.MaxWork, context);
            Assert.Contains(c.Dtype, profile.Dtypes);
            Assert.False(c.Options.Softcap > 0 && c.Options.DropoutProbability > 0, context);
            Assert.True(c.Options.DropoutProbability == 0 || c.Options.DropoutState is not null, context);
            Assert.True(c.Options.WindowLeft is >= -1 and <= 100 && c.Options.WindowRight is >= -1 and <= 100, context);
            if (!profile.LargeScales) Assert.True(c.Options.Scale is null or <= 1.5f, context);
            Assert.True(c.Options.Scale is null or <= 1.5f || c.Options.Softcap > 0, context);
            if (!profile.OneKeyRows) Assert.False(c.AtMostOneKeyPerRow, context);
            if (c.Layout.Kind == LayoutKind.PackedQkv) Assert.True(p.SeqlenQ == p.SeqlenK && p.HeadsQ == p.HeadsKv, context);
            if (c.Options.AlibiSlopes is { } slopes)
                Assert.Equal(c.Options.Alibi == AlibiKind.PerBatch ? p.Batch * p.HeadsQ : p.HeadsQ, slopes.Length);
        }
    }

    [Theory]
    [MemberData(nameof(Profiles))]
    public void EveryFeatureIsReached(string profileName)
    {
        var profile = Profile(profileName);
        var cases = Draw(profile);
        var missing = new List<string>();
        void Reached(string feature, Func<AttentionCase, bool> predicate)
        {
            if (!cases.Any(predicate)) missing.Add(feature);
        }
        foreach (var dtype in profile.Dtypes) Reached($"dtype {dtype}", c => c.Dtype == dtype);
        foreach (var kind in Enum.GetValues<LayoutKind>()) Reached($"layout {kind}", c => c.Layout.Kind == kind && c.Problem.QCount > 0);
        foreach (int edge in new[] { 63, 64, 65, 127, 128, 129 })
        {
            Reached($"seqlen_q {edge}", c => c.Problem.SeqlenQ == edge);
            Reached($"seqlen_k {edge}", c => c.Problem.SeqlenK == edge);
        }
        Reached("seqlen_q 0", c => c.Problem.SeqlenQ == 0);
        Reached("seqlen_k 0", c => c.Problem.SeqlenK == 0);
        Reached("batch 0", c => c.Problem.Batch == 0);
        Reached("batch 3", c => c.Problem.Batch == 3);
        Reached("seqlen_q > seqlen_k", c => c.Problem.SeqlenQ > c.Problem.SeqlenK && c.Problem.SeqlenK > 0);
        Reached("seqlen_q < seqlen_k", c => c.Problem.SeqlenQ < c.Problem.SeqlenK && c.Problem.SeqlenQ > 0);
        Reached("seqlens over 150", c => c.Problem.SeqlenQ > 150 && c.Problem.SeqlenK > 150);
        Reached("GQA", c => c.Problem.HeadsKv > 1 && c.Problem.HeadsQ > c.Problem.HeadsKv);
        Reached("MQA", c => c.Problem.HeadsKv == 1 && c.Problem.HeadsQ > 1);
        Reached("head dim 1", c => c.Problem.HeadDim == 1);
        Reached("head dim not a multiple of 8", c => c.Problem.HeadDim % 8 != 0 && c.Problem.HeadDim > 8);
        Reached($"head dim {profile.MaxHeadDim}", c => c.Problem.HeadDim == profile.MaxHeadDim);
        Reached("head dim over 128", c => c.Problem.HeadDim > 128);
        Reached("causal", c => c.Options.Causal);
        Reached("causal with a left window", c => c.Options.Causal && c.Options.WindowLeft >= 0);
        if (profile.OneKeyRows)
        {
            Reached("window (0, 0)", c => c.Options.WindowLeft == 0 && c.Options.WindowRight == 0);
            Reached("seqlen_k 1", c => c.Problem.SeqlenK == 1);
        }
        if (profile.LargeScales) Reached("scale over 10 (with softcap)", c => c.Options.Scale > 10);
        Reached("window (0, 1)", c => c.Options.WindowLeft == 0 && c.Options.WindowRight == 1 && !c.Options.Causal);
        Reached("left window only", c => c.Options.WindowLeft >= 0 && c.Options.WindowRight < 0 && !c.Options.Causal);
        Reached("right window only", c => c.Options.WindowRight >= 0 && c.Options.WindowLeft < 0 && !c.Options.Causal);
        Reached("custom scale", c => c.Options.Scale is not null);
        Reached("softcap", c => c.Options.Softcap > 0);
        // tanh(x) is within 1e-3 of +-1 from |x| = 3.8: a typical |QK^T| of sqrt(d) then saturates.
        Reached("saturating softcap", c => c.Options.Softcap > 0 && (c.Options.Scale ?? 1 / MathF.Sqrt(c.Problem.HeadDim)) * MathF.Sqrt(c.Problem.HeadDim) / c.Options.Softcap > 4);
        Reached("dropout", c => c.Options.DropoutProbability > 0);
        Reached("dropout with ALiBi", c => c.Options.DropoutProbability > 0 && c.Options.AlibiSlopes is not null);
        Reached("ALiBi per head", c => c.Options.Alibi == AlibiKind.PerHead);
        Reached("ALiBi per batch", c => c.Options.Alibi == AlibiKind.PerBatch && c.Problem.Batch > 1);
        Reached("softcap with ALiBi and causal", c => c.Options.Softcap > 0 && c.Options.AlibiSlopes is not null && c.Options.Causal);
        Reached("padded heads-major", c => c.Layout.Kind == LayoutKind.Padded && c.Layout.HeadsMajor && c.Problem.QCount > 0);
        Reached("packed with GQA", c => c.Layout.Kind == LayoutKind.PackedKv && c.Problem.HeadsQ > c.Problem.HeadsKv);
        Assert.True(missing.Count == 0, $"{Samples} draws of the {profileName} generator never reached: {string.Join("; ", missing)}");
    }
}
