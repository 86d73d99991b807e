using System.Numerics.Tensors;
using FlashAttn.Reference;

namespace FlashAttn.Cli.Check;

/// <summary>One self-check case: a feature (causal, GQA, dropout...) at one element type and a small shape.</summary>
internal sealed record CheckCase(string Feature, ElementType DType, ReferenceShape Shape, AttentionOptions Options)
{
    public string ShapeText => $"b{Shape.Batch} sq{Shape.SeqlenQ} sk{Shape.SeqlenK} h{Shape.HeadsQ}/{Shape.HeadsKv} d{Shape.HeadDim}";
}

/// <summary>The cases `flash-attn check` runs: every feature at every element type, forward and backward.
/// Shapes stay small (seqlen &lt;= 256) and use the awkward sizes that catch tiling bugs.</summary>
internal static class CheckCases
{
    public static IReadOnlyList<CheckCase> All(Random rng)
    {
        var cases = new List<CheckCase>();
        foreach (var type in Enum.GetValues<ElementType>())
        {
            void Add(string feature, ReferenceShape shape, AttentionOptions? options = null) =>
                cases.Add(new(feature, type, shape, options ?? AttentionOptions.Default));

            Add("non-causal", new(2, 128, 128, 4, 4, 64));
            Add("causal", new(2, 113, 200, 4, 4, 40), new() { Causal = true });
            Add("causal sq>sk", new(1, 150, 97, 2, 2, 64), new() { Causal = true });
            Add("GQA 6/2", new(1, 97, 130, 6, 2, 111));
            Add("dropout", new(2, 128, 96, 4, 4, 32), new()
            {
                DropoutProbability = 0.17f,
                DropoutState = new DropoutState((ulong)rng.NextInt64(), (ulong)rng.Next(1000)),
            });
            Add("window (32,8)", new(1, 160, 160, 2, 2, 59), new() { WindowLeft = 32, WindowRight = 8 });
            Add("softcap", new(1, 128, 128, 4, 4, 96), new() { Softcap = 1.5f });
            Add("alibi causal", new(2, 128, 128, 4, 4, 128), new()
            {
                Causal = true,
                AlibiSlopes = Tensor.Create(Enumerable.Range(0, 4).Select(h => MathF.Pow(2f, -8f * (h + 1) / 4)).ToArray(), [4]),
            });
            Add("hdim 256 MQA", new(1, 64, 80, 2, 1, 256));
        }
        return cases;
    }
}
