namespace FlashAttn.Cli.Gpu;

/// <summary>
/// One row of the feature-overhead bench: a flash-attn feature on a fixed shape, to be compared with the same shape and
/// causal setting without it ("none"). Work is counted on the score pairs the feature leaves visible, so a window's
/// TFLOP/s compare with the full attention's and its time scales with the window.
/// </summary>
/// <param name="Feature">none, softcap, alibi, dropout, gqa, packed-qkv, window, varlen.</param>
/// <param name="Window">Left and right window for "window" (-1: unlimited).</param>
/// <param name="Lengths">Per-sequence lengths for "varlen" (q and k alike); null for fixed-length batches.</param>
internal sealed record FeatureCase(string Feature, string Dtype, int Batch, int Seqlen, int Heads, int HeadDim, bool Causal, string Mode,
    (int Left, int Right) Window = default, int[]? Lengths = null)
{
    public const float Softcap = 30f, DropoutProbability = 0.1f;

    /// <summary>GQA rows group four query heads per key/value head.</summary>
    public int HeadsKv => Feature == "gqa" ? Math.Max(1, Heads / 4) : Heads;

    public int TotalTokens => Lengths?.Sum() ?? Batch * Seqlen;

    public double Flops => 4.0 * HeadDim * Heads * VisiblePairs * (Mode == "fwd" ? 1.0 : 3.5);

    /// <summary>Visible (query, key) pairs: flash-attn's convention s^2 (halved when causal) without a window, counted exactly with one.</summary>
    public double VisiblePairs
    {
        get
        {
            if (Feature == "window") return Batch * WindowPairs(Seqlen, Causal ? 0 : Window.Right, Window.Left);
            double Square(int s) => (double)s * s * (Causal ? 0.5 : 1.0);
            return Lengths is { } lengths ? lengths.Sum(Square) : Batch * Square(Seqlen);
        }
    }

    /// <summary>FLOPs of the tiles the kernels this row runs on <paramref name="architecture"/> compute (TileWork): forward
    /// 4 d per pair, backward 10 d; null for varlen rows (their blocks follow each sequence).</summary>
    public double? TileFlops(string architecture)
    {
        if (Lengths is not null) return null;
        var options = Options(new Random(0));
        int left = options.WindowLeft, right = Causal ? 0 : options.WindowRight;
        bool bf16 = Dtype == "bf16", dropout = options.DropoutProbability > 0f, softcap = options.Softcap > 0f, alibi = options.AlibiSlopes is not null;
        var forward = Cuda.ForwardVariant.Choose(architecture, HeadDim, bf16, dropout, softcap, alibi, left, right);
        double flops = 4.0 * HeadDim * TileWork.ForwardPairs(Seqlen, Seqlen, forward.BlockM, forward.BlockN, left, right);
        if (Mode != "fwd")
        {
            var backward = Cuda.BackwardVariant.Choose(architecture, HeadDim, bf16, false, dropout, softcap, alibi, Cuda.ForwardVariant.IsNarrowWindow(left, right));
            flops += 10.0 * HeadDim * TileWork.BackwardPairs(Seqlen, Seqlen, backward.BlockN, backward.BlockM, left, right);
        }
        return flops * Batch * Heads;
    }

    public string Label => $"{Mode} {Dtype} d{HeadDim}{(Causal ? " causal" : "")} {Feature}{(Feature == "window" ? $" ({Window.Left},{Window.Right})" : "")}";

    public AttentionOptions Options(Random random) => new()
    {
        Causal = Causal,
        Softcap = Feature == "softcap" ? Softcap : 0f,
        AlibiSlopes = Feature == "alibi" ? AlibiSlopes(Heads) : null,
        DropoutProbability = Feature == "dropout" ? DropoutProbability : 0f,
        DropoutState = Feature == "dropout" ? new DropoutState((ulong)random.NextInt64(), 0) : null,
        WindowLeft = Feature == "window" ? Window.Left : -1,
        WindowRight = Feature == "window" && !Causal ? Window.Right : -1,
    };

    /// <summary>The standard ALiBi slopes 2^(-8 (h + 1) / heads).</summary>
    public static System.Numerics.Tensors.Tensor<float> AlibiSlopes(int heads) =>
        System.Numerics.Tensors.Tensor.Create(Enumerable.Range(0, heads).Select(h => MathF.Pow(2f, -8f * (h + 1) / heads)).ToArray(), [heads]);

    /// <summary>Keys j in [i - left, i + right] ∩ [0, s) summed over queries i (square, so the diagonal is the main one).</summary>
    private static double WindowPairs(int s, int right, int left)
    {
        double pairs = 0;
        for (int i = 0; i < s; i++)
        {
            long begin = left < 0 ? 0 : Math.Max(0, i - left), end = right < 0 ? s - 1 : Math.Min(s - 1, i + right);
            pairs += Math.Max(0, end - begin + 1);
        }
        return pairs;
    }

    /// <summary>The features the bench measures against their baseline ("none"), as `--features` names them.</summary>
    public static readonly string[] Features = ["softcap", "alibi", "dropout", "gqa", "packed-qkv", "window", "varlen"];

    /// <summary>The rows of the feature bench at 16k tokens and hidden 2048 (DESIGN.md's sweep), bf16.</summary>
    public static IEnumerable<FeatureCase> Standard(IEnumerable<string> modes)
    {
        const int tokens = 16384, hidden = 2048;
        var lengths = MixedLengths(tokens, 512, 3584, seed: 7);
        foreach (var mode in modes)
            foreach (int d in new[] { 64, 128 })
            {
                int heads = hidden / d;
                foreach (bool causal in new[] { false, true })
                {
                    foreach (var feature in new[] { "none", "softcap", "alibi", "dropout", "gqa", "packed-qkv" })
                        yield return new FeatureCase(feature, "bf16", 4, 4096, heads, d, causal, mode);
                    // Varlen against the fixed batch of the same tokens at the mean length (b8 s2048).
                    yield return new FeatureCase("none", "bf16", 8, 2048, heads, d, causal, mode);
                    yield return new FeatureCase("varlen", "bf16", lengths.Length, lengths.Max(), heads, d, causal, mode, Lengths: lengths);
                    // Sliding windows on one 16k sequence: time must follow the window, TFLOP/s stay near full attention's.
                    yield return new FeatureCase("none", "bf16", 1, tokens, heads, d, causal, mode);
                    foreach (int w in new[] { 256, 1024, 4096 })
                        yield return new FeatureCase("window", "bf16", 1, tokens, heads, d, causal, mode, Window: (w, causal ? 0 : w));
                }
            }
    }

    /// <summary>Random lengths in [min, max] that sum to exactly <paramref name="total"/> (the last one takes the rest).</summary>
    public static int[] MixedLengths(int total, int min, int max, int seed)
    {
        var random = new Random(seed);
        var lengths = new List<int>();
        int left = total;
        while (left > max)
        {
            int next = random.Next(min, max + 1);
            if (left - next < min) next = left - min;
            lengths.Add(next);
            left -= next;
        }
        lengths.Add(left);
        return [.. lengths];
    }
}
