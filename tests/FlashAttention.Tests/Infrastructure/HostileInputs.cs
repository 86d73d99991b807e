using System.Globalization;
using FlashAttn.Reference;

namespace FlashAttn.Tests.Infrastructure;

/// <summary>The input tensor a <see cref="Poison"/> is written into.</summary>
internal enum PoisonTarget
{
    Q,
    K,
    V,
}

/// <summary>What a poisoned value does to the attention it enters (the behaviour the library defines for it).</summary>
internal enum PoisonEffect
{
    /// <summary>
    /// The value makes the scores it enters NaN or +inf (NaN anywhere in q or k; +inf in q against positive keys; scores that
    /// overflow fp32). Every row whose softmax reads such a score gets O = NaN in every column and LSE = +inf: the normaliser
    /// is not a positive number, and +inf is what flash-attn writes for it too. Rows that do not see the key are untouched.
    /// </summary>
    PoisonsRows,

    /// <summary>The value makes every score of its query row -inf (-inf in q against keys that are positive in that column): the
    /// row behaves as one that sees no key, O = 0 and LSE = +inf.</summary>
    HidesRow,

    /// <summary>A non-finite value in v: every row that sees its key carries it into that output column (NaN stays NaN, +-inf
    /// stays +-inf); the LSE does not read v and stays exactly as it was.</summary>
    ReachesOutput,
}

/// <summary>One non-finite (or huge) value written into q, k or v at (batch, row, head, column); column -1 fills the whole head
/// vector. Head is the query head for q and the kv head for k and v.</summary>
internal sealed record Poison(PoisonTarget Target, int Batch, int Row, int Head, int Column, float Value, PoisonEffect Effect)
{
    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"{Target}[{Batch},{Row},{Head},{(Column < 0 ? ":" : Column.ToString(CultureInfo.InvariantCulture))}]={Value}");
}

/// <summary>
/// A hostile-input case: a problem, its options, the poisons, and an optional change to the clean inputs made before rounding
/// (e.g. making one column of k positive, so that an infinite q entry gives scores of one sign). The clean inputs (with that
/// change) are the baseline the poisoned run is compared with.
/// </summary>
internal sealed record HostileCase(string Name, Problem Problem, AttentionOptions Options, Poison[] Poisons,
    Action<Problem, float[], float[], float[]>? Prepare = null)
{
    public override string ToString() => Name;
}

/// <summary>What one output element must be after a poisoned run, compared with the same execution path's clean run.</summary>
internal enum Expect : byte
{
    /// <summary>Bit for bit the clean run's value (NaN never leaks here).</summary>
    Clean,
    NaN,
    PositiveInfinity,
    NegativeInfinity,
    /// <summary>Exactly zero (either sign).</summary>
    Zero,
    /// <summary>
    /// The clean value or NaN: an element that does not depend on the poisoned value mathematically but may share a tile with
    /// it (0 * NaN = NaN inside one tile product, as in flash-attn). The tiles differ between the CPU and CUDA paths, so
    /// neither result is promised; it is never another value, and never outside the poisoned (batch, kv-head group).
    /// </summary>
    CleanOrNaN,
    /// <summary>Not specified (non-finite gradients inside the poisoned group whose pattern depends on the tiles).</summary>
    Any,
}

/// <summary>Expected forward outputs: O (q-shaped) and LSE ((batch, heads_q, seqlen_q)).</summary>
internal sealed record ForwardExpectation(Expect[] O, Expect[] Lse);

/// <summary>Expected gradients: dQ (q-shaped), dK and dV (k-shaped).</summary>
internal sealed record BackwardExpectation(Expect[] DQ, Expect[] DK, Expect[] DV);

/// <summary>
/// Builds the inputs of a <see cref="HostileCase"/> and states, element by element, what the library promises for them (the
/// behaviour documented in docs/TEST-MATRIX.md, "Hostile numbers"). Shared by the CPU tests (HostileInputTests) and the CUDA
/// tests (CudaHostileInputTests), so both paths are held to the same rules.
/// </summary>
internal static class HostileInputs
{
    /// <summary>Clean inputs (random normal, then <see cref="HostileCase.Prepare"/>, rounded to T) and the same inputs poisoned.</summary>
    public static (Inputs<T> Clean, Inputs<T> Poisoned) Create<T>(HostileCase c, TestRandom? random = null) where T : unmanaged
    {
        random ??= new TestRandom();
        var p = c.Problem;
        float[] q = random.Normal(p.QCount), k = random.Normal(p.KvCount), v = random.Normal(p.KvCount), dOut = random.Normal(p.QCount);
        c.Prepare?.Invoke(p, q, k, v);
        var clean = new Inputs<T>
        {
            Problem = p,
            Random = random,
            Q = Precision<T>.FromFloats(q),
            K = Precision<T>.FromFloats(k),
            V = Precision<T>.FromFloats(v),
            DOut = Precision<T>.FromFloats(dOut),
        };
        T[] pq = (T[])clean.Q.Clone(), pk = (T[])clean.K.Clone(), pv = (T[])clean.V.Clone();
        foreach (var poison in c.Poisons)
        {
            var (target, heads, rows) = poison.Target switch
            {
                PoisonTarget.Q => (pq, p.HeadsQ, p.SeqlenQ),
                PoisonTarget.K => (pk, p.HeadsKv, p.SeqlenK),
                _ => (pv, p.HeadsKv, p.SeqlenK),
            };
            int first = poison.Column < 0 ? 0 : poison.Column, last = poison.Column < 0 ? p.HeadDim - 1 : poison.Column;
            for (int col = first; col <= last; col++)
                target[Index(p, poison.Batch, poison.Row, poison.Head, col, heads, rows)] = Precision<T>.FromFloat(poison.Value);
        }
        var poisoned = new Inputs<T> { Problem = p, Random = random, Q = pq, K = pk, V = pv, DOut = clean.DOut };
        return (clean, poisoned);
    }

    /// <summary>
    /// The forward rules: a poisoned query row (or every row that sees a poisoned key) gets O = NaN and LSE = +inf; a row whose
    /// scores are all -inf gets O = 0 and LSE = +inf; a non-finite value reaches the output column of every row that sees its
    /// key (CleanOrNaN for rows of the same head group that do not, see <see cref="Expect.CleanOrNaN"/>); everything else is
    /// bit for bit the clean result. Masked keys are never read: masking overwrites a NaN score with -inf.
    /// </summary>
    public static ForwardExpectation Forward(HostileCase c)
    {
        var p = c.Problem;
        var visibility = Visibility(c);
        var o = new Expect[p.QCount];
        var lse = new Expect[p.Batch * p.HeadsQ * p.SeqlenQ];
        foreach (var poison in c.Poisons)
        {
            int b = poison.Batch;
            switch (poison.Target)
            {
                case PoisonTarget.Q:
                    if (!SeesAnyKey(visibility, p, poison.Row)) break; // its scores are all masked: the row stays O = 0, LSE = +inf
                    Row(o, lse, p, b, poison.Row, poison.Head, poison.Effect == PoisonEffect.HidesRow ? Expect.Zero : Expect.NaN);
                    break;
                case PoisonTarget.K:
                    foreach (int h in GroupHeads(p, poison.Head))
                        for (int i = 0; i < p.SeqlenQ; i++)
                            if (visibility.IsVisible(i, poison.Row, p.SeqlenQ, p.SeqlenK))
                                Row(o, lse, p, b, i, h, poison.Effect == PoisonEffect.HidesRow ? Expect.Zero : Expect.NaN);
                    break;
                default:
                    var reached = float.IsNaN(poison.Value) ? Expect.NaN : poison.Value > 0 ? Expect.PositiveInfinity : Expect.NegativeInfinity;
                    int first = poison.Column < 0 ? 0 : poison.Column, last = poison.Column < 0 ? p.HeadDim - 1 : poison.Column;
                    foreach (int h in GroupHeads(p, poison.Head))
                        for (int i = 0; i < p.SeqlenQ; i++)
                        {
                            bool sees = visibility.IsVisible(i, poison.Row, p.SeqlenQ, p.SeqlenK);
                            for (int col = first; col <= last; col++)
                            {
                                int at = ReferenceAttention.QIndex(p.Shape, b, i, h, col);
                                o[at] = Stronger(o[at], sees ? reached : Expect.CleanOrNaN);
                            }
                        }
                    break;
            }
        }
        return new ForwardExpectation(o, lse);
    }

    /// <summary>
    /// The backward rules. Without a mask and with NaN poisons: a NaN query row makes its own dQ row and dK, dV of every key of
    /// its kv head NaN; a NaN key makes dQ of the whole group NaN (D = rowsum(dO * O) is NaN on every row), dK of its kv head
    /// NaN and dV NaN at that key only, with dV = 0 at the other keys (the LSE of +inf makes P = 0 there; flash-attn gives the
    /// same); a NaN value makes dQ of the group and dK of its kv head NaN, while dV, which does not read v, stays exactly clean.
    /// A NaN query row that sees no key keeps its dQ row exactly as clean (zero). Any other case only promises isolation: the
    /// poisoned (batch, kv-head group) may hold any values, every other element is bit for bit the clean result.
    /// </summary>
    public static BackwardExpectation Backward(HostileCase c)
    {
        var p = c.Problem;
        var visibility = Visibility(c);
        var dq = new Expect[p.QCount];
        var dk = new Expect[p.KvCount];
        var dv = new Expect[p.KvCount];
        bool unmasked = visibility.WindowLeft < 0 && visibility.WindowRight < 0 && c.Options.DropoutProbability == 0f;
        foreach (var poison in c.Poisons)
        {
            int b = poison.Batch, hk = poison.Target == PoisonTarget.Q ? poison.Head / (p.HeadsQ / p.HeadsKv) : poison.Head;
            bool nan = float.IsNaN(poison.Value);
            if (poison.Target == PoisonTarget.Q && !SeesAnyKey(visibility, p, poison.Row))
            {
                // P = 0 and D = 0 on that row, so its dS is 0 and its dQ row stays 0; dK sums 0 * q, which is NaN where a tile
                // holds the row; dV sums P * dO = 0.
                Fill(dk, p, b, hk, Expect.CleanOrNaN, kv: true);
                continue;
            }
            if (!unmasked || !nan)
            {
                foreach (int h in GroupHeads(p, hk)) Fill(dq, p, b, h, Expect.Any, kv: false);
                Fill(dk, p, b, hk, Expect.Any, kv: true);
                Fill(dv, p, b, hk, Expect.Any, kv: true);
                continue;
            }
            switch (poison.Target)
            {
                case PoisonTarget.Q:
                    for (int col = 0; col < p.HeadDim; col++) dq[ReferenceAttention.QIndex(p.Shape, b, poison.Row, poison.Head, col)] = Expect.NaN;
                    Fill(dk, p, b, hk, Expect.NaN, kv: true);
                    Fill(dv, p, b, hk, Expect.NaN, kv: true);
                    break;
                case PoisonTarget.K:
                    foreach (int h in GroupHeads(p, hk)) Fill(dq, p, b, h, Expect.NaN, kv: false);
                    Fill(dk, p, b, hk, Expect.NaN, kv: true);
                    for (int j = 0; j < p.SeqlenK; j++)
                        for (int col = 0; col < p.HeadDim; col++)
                            dv[ReferenceAttention.KvIndex(p.Shape, b, j, hk, col)] = j == poison.Row ? Expect.NaN : Expect.Zero;
                    break;
                default:
                    foreach (int h in GroupHeads(p, hk)) Fill(dq, p, b, h, Expect.NaN, kv: false);
                    Fill(dk, p, b, hk, Expect.NaN, kv: true);
                    break;
            }
        }
        return new BackwardExpectation(dq, dk, dv);
    }

    /// <summary>Every element against its expectation; the first mismatch fails with its position and both values.</summary>
    public static void AssertMatches(string what, double[] actual, double[] clean, Expect[] expected, Func<int, string> position, string context)
    {
        Assert.True(actual.Length == expected.Length && clean.Length == expected.Length,
            $"{what}: {actual.Length} elements, clean run {clean.Length}, expectation {expected.Length}. {context}");
        for (int i = 0; i < actual.Length; i++)
        {
            double a = actual[i], x = clean[i];
            bool ok = expected[i] switch
            {
                Expect.Clean => a.Equals(x),
                Expect.NaN => double.IsNaN(a),
                Expect.PositiveInfinity => double.IsPositiveInfinity(a),
                Expect.NegativeInfinity => double.IsNegativeInfinity(a),
                Expect.Zero => a == 0,
                Expect.CleanOrNaN => double.IsNaN(a) || a.Equals(x),
                _ => true,
            };
            if (!ok)
                Assert.Fail(string.Create(CultureInfo.InvariantCulture,
                    $"{what}{position(i)} = {a:R}, expected {Describe(expected[i])} (clean run: {x:R}). {context}"));
        }
    }

    /// <summary>
    /// Two execution paths agree element for element on the special values (NaN, +-inf, and the exact zeros the rules
    /// promise) wherever the rules pin the element down (not <see cref="Expect.CleanOrNaN"/> or <see cref="Expect.Any"/>).
    /// </summary>
    public static void AssertSameSpecialValues(string what, double[] first, double[] second, Expect[] expected, Func<int, string> position,
        string context)
    {
        Assert.True(first.Length == second.Length, $"{what}: {first.Length} vs {second.Length} elements. {context}");
        for (int i = 0; i < first.Length; i++)
        {
            if (expected[i] is Expect.CleanOrNaN or Expect.Any) continue;
            bool zero = expected[i] == Expect.Zero;
            if (Classify(first[i], zero) != Classify(second[i], zero))
                Assert.Fail(string.Create(CultureInfo.InvariantCulture,
                    $"{what}{position(i)}: CPU {first[i]:R}, CUDA {second[i]:R}; the paths must agree on special values. {context}"));
        }
    }

    /// <summary>
    /// Rows that see no key (causal with seqlen_q &gt; seqlen_k, windows that hide a row's whole range, seqlen_k = 0): O exactly 0,
    /// LSE +inf and dQ exactly 0 on those rows; rows that see a key have a finite LSE. Returns how many rows saw nothing.
    /// </summary>
    public static int AssertRowsThatSeeNoKey<T>(Problem p, AttentionOptions options, AttentionResult<T> forward, AttentionGradients<T> grads,
        string context) where T : unmanaged
    {
        var visibility = ReferenceSettings.From(options, p.HeadDim, p.Batch, p.HeadsQ);
        double[] o = Precision<T>.Flatten(forward.Output), lse = Flat.Of(forward.LogSumExp), dq = Precision<T>.Flatten(grads.DQ);
        int empty = 0;
        for (int i = 0; i < p.SeqlenQ; i++)
        {
            bool sees = SeesAnyKey(visibility, p, i);
            if (!sees) empty++;
            for (int b = 0; b < p.Batch; b++)
                for (int h = 0; h < p.HeadsQ; h++)
                {
                    double l = lse[(b * p.HeadsQ + h) * p.SeqlenQ + i];
                    Assert.True(sees ? double.IsFinite(l) : double.IsPositiveInfinity(l), $"LSE[b={b}, h={h}, i={i}] = {l}. {context}");
                    if (sees) continue;
                    for (int c = 0; c < p.HeadDim; c++)
                    {
                        int at = ReferenceAttention.QIndex(p.Shape, b, i, h, c);
                        Assert.True(o[at] == 0 && dq[at] == 0, $"row [b={b}, i={i}, h={h}] sees no key but O[{c}] = {o[at]}, dQ[{c}] = {dq[at]}. {context}");
                    }
                }
        }
        return empty;
    }

    /// <summary>[b, i, h, c] of a q-shaped index.</summary>
    public static Func<int, string> QPosition(Problem p) => i =>
        $"[b={i / (p.SeqlenQ * p.HeadsQ * p.HeadDim)}, i={i / (p.HeadsQ * p.HeadDim) % p.SeqlenQ}, h={i / p.HeadDim % p.HeadsQ}, c={i % p.HeadDim}]";

    /// <summary>[b, j, hk, c] of a k-shaped index.</summary>
    public static Func<int, string> KvPosition(Problem p) => i =>
        $"[b={i / (p.SeqlenK * p.HeadsKv * p.HeadDim)}, j={i / (p.HeadsKv * p.HeadDim) % p.SeqlenK}, hk={i / p.HeadDim % p.HeadsKv}, c={i % p.HeadDim}]";

    /// <summary>[b, h, i] of an LSE index.</summary>
    public static Func<int, string> LsePosition(Problem p) => i =>
        $"[b={i / (p.HeadsQ * p.SeqlenQ)}, h={i / p.SeqlenQ % p.HeadsQ}, i={i % p.SeqlenQ}]";

    /// <summary>How many elements the rules pin to something other than the clean value (a case must test something).</summary>
    public static int Special(params Expect[][] expectations) => expectations.Sum(e => e.Count(x => x != Expect.Clean));

    private static string Classify(double x, bool zero) =>
        double.IsNaN(x) ? "NaN" : double.IsPositiveInfinity(x) ? "+inf" : double.IsNegativeInfinity(x) ? "-inf" : zero && x == 0 ? "0" : "finite";

    private static string Describe(Expect e) => e switch
    {
        Expect.Clean => "the clean run's value, bit for bit",
        Expect.NaN => "NaN",
        Expect.PositiveInfinity => "+inf",
        Expect.NegativeInfinity => "-inf",
        Expect.Zero => "0",
        Expect.CleanOrNaN => "the clean value or NaN",
        _ => "anything",
    };

    private static ReferenceSettings Visibility(HostileCase c) =>
        ReferenceSettings.From(c.Options, c.Problem.HeadDim, c.Problem.Batch, c.Problem.HeadsQ);

    private static bool SeesAnyKey(ReferenceSettings visibility, Problem p, int row)
    {
        for (int j = 0; j < p.SeqlenK; j++)
            if (visibility.IsVisible(row, j, p.SeqlenQ, p.SeqlenK)) return true;
        return false;
    }

    private static IEnumerable<int> GroupHeads(Problem p, int kvHead)
    {
        int group = p.HeadsQ / p.HeadsKv;
        return Enumerable.Range(kvHead * group, group);
    }

    /// <summary>O row and LSE of (b, h, i): O = <paramref name="output"/> in every column, LSE = +inf.</summary>
    private static void Row(Expect[] o, Expect[] lse, Problem p, int b, int i, int h, Expect output)
    {
        for (int col = 0; col < p.HeadDim; col++)
        {
            int at = ReferenceAttention.QIndex(p.Shape, b, i, h, col);
            o[at] = Stronger(o[at], output);
        }
        lse[(b * p.HeadsQ + h) * p.SeqlenQ + i] = Expect.PositiveInfinity;
    }

    /// <summary>Every element of (b, head) in a q-shaped (kv: false) or k-shaped (kv: true) expectation.</summary>
    private static void Fill(Expect[] target, Problem p, int b, int head, Expect value, bool kv)
    {
        int rows = kv ? p.SeqlenK : p.SeqlenQ;
        for (int r = 0; r < rows; r++)
            for (int col = 0; col < p.HeadDim; col++)
            {
                int at = kv ? ReferenceAttention.KvIndex(p.Shape, b, r, head, col) : ReferenceAttention.QIndex(p.Shape, b, r, head, col);
                target[at] = Stronger(target[at], value);
            }
    }

    /// <summary>Two poisons reaching one element: a NaN wins over a weaker promise, Any over everything, other conflicts give Any.</summary>
    private static Expect Stronger(Expect current, Expect next) =>
        current == Expect.Clean ? next : next == Expect.Clean ? current : current == next ? current
            : current == Expect.Any || next == Expect.Any ? Expect.Any
            : current == Expect.NaN || next == Expect.NaN ? Expect.NaN : Expect.Any;

    private static int Index(Problem p, int b, int row, int head, int col, int heads, int rows) =>
        ((b * rows + row) * heads + head) * p.HeadDim + col;
}

/// <summary>
/// Runs a <see cref="HostileCase"/> on one execution path: the clean inputs first, checked against the float64 reference with
/// the tolerance rule (so every element the rules call Clean is within tolerance there too), then the poisoned inputs, held
/// element by element to <see cref="HostileInputs.Forward"/> / <see cref="HostileInputs.Backward"/>.
/// </summary>
internal static class HostileCheck
{
    public sealed record ForwardOutcome(double[] O, double[] Lse, ForwardExpectation Expected);

    public sealed record BackwardOutcome(double[] DQ, double[] DK, double[] DV, BackwardExpectation Expected);

    public static AttentionResult<T> CpuForward<T>(Inputs<T> inputs, AttentionOptions options) where T : unmanaged =>
        FlashAttention.Forward<T>(inputs.QTensor, inputs.KTensor, inputs.VTensor, options, TestContext.Current.CancellationToken);

    public static AttentionGradients<T> CpuBackward<T>(Inputs<T> inputs, AttentionOptions options, AttentionResult<T> forward) where T : unmanaged =>
        FlashAttention.Backward<T>(inputs.DOutTensor, inputs.QTensor, inputs.KTensor, inputs.VTensor, forward.Output, forward.LogSumExp, options,
            forward.DropoutState, TestContext.Current.CancellationToken);

    public static ForwardOutcome Forward<T>(HostileCase c, Inputs<T> clean, Inputs<T> poisoned,
        Func<Inputs<T>, AttentionOptions, AttentionResult<T>> run) where T : unmanaged
    {
        var cleanResult = AttentionCheck.Forward(c.Problem, c.Options, inputs: clean, run: run);
        var hostile = run(poisoned, c.Options);
        var expected = HostileInputs.Forward(c);
        Assert.True(HostileInputs.Special(expected.O, expected.Lse) > 0, $"case {c.Name} pins no output element to a special value");
        string context = Context(c, clean);
        var o = Precision<T>.Flatten(hostile.Output);
        var lse = Flat.Of(hostile.LogSumExp);
        HostileInputs.AssertMatches("O", o, Precision<T>.Flatten(cleanResult.Output), expected.O, HostileInputs.QPosition(c.Problem), context);
        HostileInputs.AssertMatches("LSE", lse, Flat.Of(cleanResult.LogSumExp), expected.Lse, HostileInputs.LsePosition(c.Problem), context);
        return new ForwardOutcome(o, lse, expected);
    }

    public static BackwardOutcome Backward<T>(HostileCase c, Inputs<T> clean, Inputs<T> poisoned,
        Func<Inputs<T>, AttentionOptions, AttentionResult<T>> runForward,
        Func<Inputs<T>, AttentionOptions, AttentionResult<T>, AttentionGradients<T>> runBackward) where T : unmanaged
    {
        var cleanGrads = AttentionCheck.Backward(c.Problem, c.Options, clean, runForward, runBackward);
        var grads = runBackward(poisoned, c.Options, runForward(poisoned, c.Options));
        var expected = HostileInputs.Backward(c);
        string context = Context(c, clean);
        double[] dq = Precision<T>.Flatten(grads.DQ), dk = Precision<T>.Flatten(grads.DK), dv = Precision<T>.Flatten(grads.DV);
        HostileInputs.AssertMatches("dQ", dq, Precision<T>.Flatten(cleanGrads.DQ), expected.DQ, HostileInputs.QPosition(c.Problem), context);
        HostileInputs.AssertMatches("dK", dk, Precision<T>.Flatten(cleanGrads.DK), expected.DK, HostileInputs.KvPosition(c.Problem), context);
        HostileInputs.AssertMatches("dV", dv, Precision<T>.Flatten(cleanGrads.DV), expected.DV, HostileInputs.KvPosition(c.Problem), context);
        return new BackwardOutcome(dq, dk, dv, expected);
    }

    private static string Context<T>(HostileCase c, Inputs<T> inputs) where T : unmanaged =>
        $"case {c.Name}: {string.Join(", ", c.Poisons.Select(p => p.ToString()))} {AttentionCheck.Context<T>(c.Problem, c.Options, inputs.Random)}";
}

/// <summary>The hostile-input cases both paths run (theory data carries the name; the case is looked up here).</summary>
internal static class HostileCases
{
    // No mask: every row sees every key. Two query blocks and two key blocks on the CPU path (64 x 64), GQA 4:2, head dim 40.
    private static readonly Problem Open = new(2, 70, 90, 4, 2, 40);

    // Causal with seqlen_q > seqlen_k: row i sees keys j <= i - 20, so rows 0..19 see nothing.
    private static readonly Problem Lower = new(2, 90, 70, 4, 2, 40);

    // Deterministic: the CUDA dQ is then reproducible bit for bit (the CPU path always is), so "Clean" can be exact there too.
    private static readonly AttentionOptions NoMask = new() { Deterministic = true };
    private static readonly AttentionOptions Causal = new() { Causal = true, Deterministic = true };

    public static IReadOnlyDictionary<string, HostileCase> All { get; } = new HostileCase[]
    {
        new("q-nan", Open, NoMask, [new(PoisonTarget.Q, 1, 33, 2, 5, float.NaN, PoisonEffect.PoisonsRows)]),
        new("k-nan", Open, NoMask, [new(PoisonTarget.K, 1, 77, 1, 0, float.NaN, PoisonEffect.PoisonsRows)]),
        new("v-nan", Open, NoMask, [new(PoisonTarget.V, 0, 5, 0, 39, float.NaN, PoisonEffect.ReachesOutput)]),
        new("q-nan-causal", Lower, Causal,
        [
            new(PoisonTarget.Q, 0, 64, 3, -1, float.NaN, PoisonEffect.PoisonsRows),  // sees keys 0..44
            new(PoisonTarget.Q, 1, 7, 0, 3, float.NaN, PoisonEffect.PoisonsRows),    // sees no key: stays O = 0, LSE = +inf
        ]),
        new("k-nan-causal", Lower, Causal, [new(PoisonTarget.K, 1, 30, 0, 11, float.NaN, PoisonEffect.PoisonsRows)]),
        new("v-nan-causal", Lower, Causal, [new(PoisonTarget.V, 0, 40, 1, 2, float.NaN, PoisonEffect.ReachesOutput)]),
        // +inf against a positive key column gives +inf scores (a NaN row); -inf gives -inf scores (a row that sees nothing).
        new("q-inf", Open, NoMask,
        [
            new(PoisonTarget.Q, 1, 10, 1, 7, float.PositiveInfinity, PoisonEffect.PoisonsRows),
            new(PoisonTarget.Q, 1, 50, 0, 7, float.NegativeInfinity, PoisonEffect.HidesRow),
        ], PositiveKeyColumn(batch: 1, kvHead: 0, column: 7)),
        new("v-inf", Open, NoMask,
        [
            new(PoisonTarget.V, 1, 3, 1, 20, float.PositiveInfinity, PoisonEffect.ReachesOutput),
            new(PoisonTarget.V, 0, 88, 0, 0, float.NegativeInfinity, PoisonEffect.ReachesOutput),
        ]),
        // Scores beyond fp32's range: a query row of 1e36 against keys of 1e3 overflows QK^T to +inf (the float64 reference
        // would stay finite: a documented limit of fp32 accumulation), while the other rows of the kv group see scores of
        // about 1e4 against the same keys and must stay exact. Not for fp16, which cannot hold 1e36.
        new("scores-overflow", Open, NoMask, [new(PoisonTarget.Q, 0, 12, 3, -1, 1e36f, PoisonEffect.PoisonsRows)], KeysOf(batch: 0, kvHead: 1, value: 1e3f)),
    }.ToDictionary(c => c.Name);

    /// <summary>(case, dtype) pairs for the given dtypes. fp16 skips the overflow case (it cannot hold 1e36), and so does backward:
    /// its clean run's dQ is 1e3 * (a sum of dS that cancels to 0 over keys that are all equal), whose rounding no tolerance
    /// rule can bound.</summary>
    public static TheoryData<string, Dtype> Data(bool backward, params Dtype[] dtypes)
    {
        var data = new TheoryData<string, Dtype>();
        foreach (var name in All.Keys)
            foreach (var dtype in dtypes)
                if (!(name == "scores-overflow" && (dtype == Dtype.Fp16 || backward))) data.Add(name, dtype);
        return data;
    }

    private static Action<Problem, float[], float[], float[]> PositiveKeyColumn(int batch, int kvHead, int column) => (p, _, k, _) =>
    {
        for (int j = 0; j < p.SeqlenK; j++)
        {
            int at = ReferenceAttention.KvIndex(p.Shape, batch, j, kvHead, column);
            k[at] = Math.Abs(k[at]);
        }
    };

    private static Action<Problem, float[], float[], float[]> KeysOf(int batch, int kvHead, float value) => (p, _, k, _) =>
    {
        for (int j = 0; j < p.SeqlenK; j++)
            for (int c = 0; c < p.HeadDim; c++) k[ReferenceAttention.KvIndex(p.Shape, batch, j, kvHead, c)] = value;
    };
}

/// <summary>Inputs with huge logits that every path computes exactly, so the online softmax is tested, not the rounding of QK^T.</summary>
internal static class LargeScores
{
    /// <summary>
    /// Logits of magnitude |m| * 2^<paramref name="log2Magnitude"/> that differ between keys by small integers: q = q0 * m
    /// (m in +-{1, 2, 3} per row, the same in every column), k = c0 + g * n (n in {-1, 0, 1}; c0 = 32, g = d * c0 / 2^log2Magnitude,
    /// which T must represent next to c0: log2Magnitude up to 16 in fp16, 13 in bf16, 21 in fp32 at d = 64) and scale 1 / (q0 * g).
    /// Every partial sum of QK^T is an integer multiple of q0 * g below 2^24 of them, so fp32 accumulation is exact on every
    /// path and the softmax sees exactly the reference's logits.
    /// </summary>
    public static (Inputs<T> Inputs, AttentionOptions Options) FineLogits<T>(Problem p, int log2Magnitude, TestRandom? random = null)
        where T : unmanaged
    {
        random ??= new TestRandom();
        const float q0 = 1024f, c0 = 32f;
        float g = p.HeadDim * c0 / MathF.Pow(2, log2Magnitude);
        if (Precision<T>.ToFloat(Precision<T>.FromFloat(c0 + g)) != c0 + g || 3.0 * (p.HeadDim * c0 / g + p.HeadDim) >= 1 << 24)
            throw new ArgumentOutOfRangeException(nameof(log2Magnitude), $"2^{log2Magnitude} is not exact in {Precision<T>.Name} at d = {p.HeadDim}");
        var q = new float[p.QCount];
        for (int row = 0; row < p.QCount / p.HeadDim; row++)
        {
            int m = random.Random.Next(1, 4) * (random.Random.Next(2) == 0 ? 1 : -1);
            Array.Fill(q, q0 * m, row * p.HeadDim, p.HeadDim);
        }
        var k = new float[p.KvCount];
        for (int i = 0; i < k.Length; i++) k[i] = c0 + g * random.Random.Next(-1, 2);
        return (Build<T>(p, random, q, k), new AttentionOptions { SoftmaxScale = 1f / (q0 * g) });
    }

    /// <summary>The largest magnitude <see cref="FineLogits{T}"/> builds at d = 64: 2^16 (fp16), 2^13 (bf16), 2^21 (fp32).</summary>
    public static int MaxLog2Magnitude<T>() where T : unmanaged =>
        typeof(T) == typeof(Half) ? 16 : typeof(T) == typeof(BFloat16) ? 13 : 21;

    /// <summary>The fp16 magnitude (2^12, logits up to 1.2e4) at which backward still meets the rule: see HostileInputTests.</summary>
    public const int BackwardLog2Magnitude = 12;

    /// <summary>
    /// Logits that ramp by <paramref name="step"/> per key, rising along the keys on rows where (i + h) is even and falling on
    /// the others: q = +-1, k_j = j - seqlen_k / 2 in every column, scale = step / d. With step 100 or more every key block
    /// moves the running maximum by thousands (rescale factors exp(-6400) = 0) or adds nothing (exp of -thousands), and the
    /// softmax is one-hot on the first or last visible key. Exact in every dtype for seqlen_k up to 512.
    /// </summary>
    public static (Inputs<T> Inputs, AttentionOptions Options) Ramp<T>(Problem p, float step, bool causal, TestRandom? random = null)
        where T : unmanaged
    {
        random ??= new TestRandom();
        var q = new float[p.QCount];
        for (int b = 0; b < p.Batch; b++)
            for (int i = 0; i < p.SeqlenQ; i++)
                for (int h = 0; h < p.HeadsQ; h++)
                    Array.Fill(q, (i + h) % 2 == 0 ? 1f : -1f, ReferenceAttention.QIndex(p.Shape, b, i, h, 0), p.HeadDim);
        var k = new float[p.KvCount];
        for (int b = 0; b < p.Batch; b++)
            for (int j = 0; j < p.SeqlenK; j++)
                for (int h = 0; h < p.HeadsKv; h++)
                    Array.Fill(k, j - p.SeqlenK / 2, ReferenceAttention.KvIndex(p.Shape, b, j, h, 0), p.HeadDim);
        return (Build<T>(p, random, q, k), new AttentionOptions { SoftmaxScale = step / p.HeadDim, Causal = causal });
    }

    /// <summary>Random inputs scaled by <paramref name="magnitude"/> (q and k; v and dO stay standard normal).</summary>
    public static Inputs<T> Scaled<T>(Problem p, float magnitude, TestRandom? random = null) where T : unmanaged
    {
        random ??= new TestRandom();
        return Build<T>(p, random, random.Normal(p.QCount, magnitude), random.Normal(p.KvCount, magnitude));
    }

    private static Inputs<T> Build<T>(Problem p, TestRandom random, float[] q, float[] k) where T : unmanaged => new()
    {
        Problem = p,
        Random = random,
        Q = Precision<T>.FromFloats(q),
        K = Precision<T>.FromFloats(k),
        V = Precision<T>.FromFloats(random.Normal(p.KvCount)),
        DOut = Precision<T>.FromFloats(random.Normal(p.QCount)),
    };
}

/// <summary>The promises of empty work and of single keys, shared with the CUDA tests.</summary>
internal static class EmptyWork
{
    public static void AssertPromises<T>(Problem problem, AttentionResult<T> forward, AttentionGradients<T> grads, string path) where T : unmanaged
    {
        Assert.Equal(problem.QLengths, forward.Output.Lengths.ToArray());
        Assert.Equal(problem.LseLengths, forward.LogSumExp.Lengths.ToArray());
        Assert.Equal(problem.QLengths, grads.DQ.Lengths.ToArray());
        Assert.Equal(problem.KvLengths, grads.DK.Lengths.ToArray());
        Assert.Equal(problem.KvLengths, grads.DV.Lengths.ToArray());
        // Every case here is empty somewhere: O and dQ are empty, or (seqlen_k = 0) O = 0, LSE = +inf and dQ = 0.
        Assert.All(Precision<T>.Flatten(forward.Output), x => Assert.True(x == 0, $"{path}: O = {x}"));
        Assert.All(Flat.Of(forward.LogSumExp), x => Assert.True(double.IsPositiveInfinity(x) || problem.SeqlenK > 0, $"{path}: LSE = {x}"));
        Assert.All(Precision<T>.Flatten(grads.DQ), x => Assert.True(x == 0, $"{path}: dQ = {x}"));
        // No query (seqlen_q = 0 or heads_q = 0) reads a key: dK = dV = 0.
        if (problem.SeqlenQ == 0 || problem.HeadsQ == 0)
        {
            Assert.All(Precision<T>.Flatten(grads.DK), x => Assert.True(x == 0, $"{path}: dK = {x}"));
            Assert.All(Precision<T>.Flatten(grads.DV), x => Assert.True(x == 0, $"{path}: dV = {x}"));
        }
    }

    /// <summary>With one key per sequence, P = 1 and O equals that key's value bit for bit (fp16/bf16).</summary>
    public static void AssertOutputIsValue<T>(Problem problem, Inputs<T> inputs, AttentionResult<T> forward, string path) where T : unmanaged
    {
        var o = Precision<T>.Flatten(forward.Output);
        var v = Precision<T>.ToDoubles(inputs.V);
        for (int b = 0; b < problem.Batch; b++)
            for (int h = 0; h < problem.HeadsQ; h++)
                for (int c = 0; c < problem.HeadDim; c++)
                {
                    double expected = v[ReferenceAttention.KvIndex(problem.Shape, b, 0, h / (problem.HeadsQ / problem.HeadsKv), c)];
                    double actual = o[ReferenceAttention.QIndex(problem.Shape, b, 0, h, c)];
                    Assert.True(actual == expected, $"{path}: O[{b}, 0, {h}, {c}] = {actual}, v = {expected}");
                }
    }
}
