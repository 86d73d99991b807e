using FlashAttn.Training.Data;

namespace FlashAttn.Tests.Training;

/// <summary>The training data: a real text corpus tokenised with GPT-2's BPE, streamed as seeded, shuffled windows of context + 1 tokens.
/// No torch needed: these run everywhere.</summary>
public sealed class CorpusTokenSourceTests : IDisposable
{
    private readonly string _directory = Path.Combine(Path.GetTempPath(), "flash-attn-corpus-" + Guid.NewGuid().ToString("N"));

    public CorpusTokenSourceTests() => Directory.CreateDirectory(_directory);

    /// <summary>A corpus of the ids 0..count-1, so each id tells its position.</summary>
    private static TokenizedCorpus Counting(int count, int vocab = 100_000) => new(Enumerable.Range(0, count), vocab, "counting", "none");

    [Fact]
    public void SameSeedGivesTheSameBatches()
    {
        var corpus = Counting(1000);
        var a = new CorpusTokenSource(corpus, seed: 7);
        var b = new CorpusTokenSource(corpus, seed: 7);
        for (int i = 0; i < 20; i++)
            Assert.Equal(a.Next(3, 31), b.Next(3, 31));
    }

    [Fact]
    public void AnotherSeedGivesOtherBatches()
    {
        var corpus = Counting(10_000);
        var a = new CorpusTokenSource(corpus, seed: 1);
        var b = new CorpusTokenSource(corpus, seed: 2);
        Assert.NotEqual(a.Next(4, 63), b.Next(4, 63));
    }

    [Fact]
    public void KnownValuesForSeed1234()
    {
        // Pins the schedule (SplitMix64, not System.Random): the same batches on every machine and .NET version.
        var source = new CorpusTokenSource(Counting(1000), seed: 1234);
        Assert.Equal([57, 58, 59, 60, 73, 74, 75, 76], source.Next(2, 3));
        Assert.Equal([185, 186, 187, 188, 349, 350, 351, 352], source.Next(2, 3));
    }

    [Theory]
    [InlineData(1, 1)]
    [InlineData(4, 128)]
    [InlineData(3, 4096)]
    public void ShapeIsBatchTimesContextPlusOne(int batch, int context)
    {
        var source = new CorpusTokenSource(Counting(5000), seed: 3);
        Assert.Equal(batch * (context + 1), source.Next(batch, context).Length);
    }

    [Fact]
    public void RowsAreConsecutiveTextSoTargetsAreInputsShiftedByOne()
    {
        const int count = 997, context = 40;
        var source = new CorpusTokenSource(Counting(count), seed: 11);
        for (int call = 0; call < 30; call++)
        {
            long[] ids = source.Next(5, context);
            for (int row = 0; row < 5; row++)
            {
                var window = ids.AsSpan(row * (context + 1), context + 1);
                var inputs = window[..context];
                var targets = window[1..];
                for (int t = 0; t < context; t++)
                    Assert.Equal((inputs[t] + 1) % count, targets[t]); // the target of each position is the corpus's next token
            }
        }
    }

    [Fact]
    public void WindowsWrapAroundTheEnd()
    {
        // 10 tokens, windows of 25: every window runs past the end and goes on from the start.
        var source = new CorpusTokenSource(Counting(10), seed: 5);
        long[] ids = source.Next(1, 24);
        for (int t = 1; t < ids.Length; t++)
            Assert.Equal((ids[t - 1] + 1) % 10, ids[t]);
        Assert.Contains(9L, ids);
        Assert.Contains(0L, ids);
    }

    [Fact]
    public void AnEpochCoversEveryTokenOnce()
    {
        // 100 tokens, windows of 10: an epoch is 10 windows, 10 apart from a random phase.
        var source = new CorpusTokenSource(Counting(100), seed: 9);
        Assert.Equal(10, source.WindowsPerEpoch(9));
        long[] ids = source.Next(10, 9);
        Assert.Equal(Enumerable.Range(0, 100).Select(i => (long)i), ids.Order());
        Assert.Equal(1, source.Epoch);
        source.Next(1, 9);
        Assert.Equal(2, source.Epoch);
    }

    [Fact]
    public void EpochsShuffleDifferently()
    {
        var source = new CorpusTokenSource(Counting(1000), seed: 4);
        long[] first = source.Next(10, 99);
        long[] second = source.Next(10, 99);
        Assert.NotEqual(first, second);
        Assert.Equal(first.Order(), second.Order()); // a new phase and order, the same text
    }

    [Fact]
    public void ChangingTheContextStartsItsScheduleAfresh()
    {
        var corpus = Counting(3000);
        var mixed = new CorpusTokenSource(corpus, seed: 8);
        mixed.Next(2, 15);
        var fresh = new CorpusTokenSource(corpus, seed: 8);
        Assert.Equal(fresh.Next(2, 63), mixed.Next(2, 63));
    }

    [Fact]
    public void RejectsBadArguments()
    {
        var source = new CorpusTokenSource(Counting(10), seed: 1);
        Assert.Throws<ArgumentOutOfRangeException>(() => source.Next(0, 8));
        Assert.Throws<ArgumentOutOfRangeException>(() => source.Next(1, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new TokenizedCorpus([1, 2, 100], 100, "x", "none"));
        Assert.Throws<CorpusException>(() => new TokenizedCorpus([], 100, "x", "none"));
    }

    [Fact]
    public void RealTextGivesGpt2IdsBelowTheVocabulary()
    {
        const string first = "This program is free software: you can redistribute it and/or modify it.\n";
        const string second = "Permission is hereby granted, free of charge, to any person obtaining a copy.\n";
        File.WriteAllText(Path.Combine(_directory, "a.txt"), first);
        File.WriteAllText(Path.Combine(_directory, "b.txt"), second);

        var source = CorpusTokenSource.Load(_directory, seed: 1);
        var corpus = source.Corpus;
        Assert.Equal(Gpt2Tokenizer.VocabSize, source.VocabSize);
        Assert.Equal(50257, source.VocabSize);
        Assert.Equal(2, corpus.Documents);
        Assert.Equal(Gpt2Tokenizer.EndOfText, corpus.Tokens[^1]);
        Assert.Equal(2, corpus.Tokens.ToArray().Count(t => t == Gpt2Tokenizer.EndOfText));
        Assert.All(source.Next(2, 16), id => Assert.InRange(id, 0, Gpt2Tokenizer.VocabSize - 1));

        // The ids are GPT-2's: they decode back to the text, and a common word is one known token.
        int[] ids = corpus.Tokens.ToArray();
        int separator = Array.IndexOf(ids, Gpt2Tokenizer.EndOfText);
        Assert.Equal(first, Gpt2Tokenizer.Shared.Decode(ids[..separator]));
        Assert.Equal([15496], Gpt2Tokenizer.Shared.Encode("Hello")); // GPT-2's id of "Hello"
    }

    [Fact]
    public void TheDefaultCorpusIsTheLicenceTexts()
    {
        if (!Directory.Exists(TextCorpus.DefaultPath)) Assert.Skip($"{TextCorpus.DefaultPath} is not on this machine (base-files of Debian/Ubuntu ships it).");
        var text = TextCorpus.Load();
        Assert.Equal(TextCorpus.DefaultPath, text.Source);
        Assert.Contains(text.Documents, d => d.Name == "GPL-3" && d.Text.Contains("GNU GENERAL PUBLIC LICENSE", StringComparison.Ordinal));
        Assert.DoesNotContain(text.Documents, d => d.Name == "GPL"); // a symbolic link to GPL-3: skipped, not read twice
        Assert.Equal(text.Documents.Select(d => d.Name).Order(StringComparer.Ordinal), text.Documents.Select(d => d.Name));

        var corpus = TokenizedCorpus.Tokenize(text);
        Assert.InRange(corpus.Count, 10_000, 1_000_000);
        Assert.All(corpus.Tokens.ToArray(), id => Assert.InRange(id, 0, Gpt2Tokenizer.VocabSize - 1));
    }

    [Fact]
    public void FoldersAreReadInOrdinalOrderWithoutLinks()
    {
        Directory.CreateDirectory(Path.Combine(_directory, "sub"));
        File.WriteAllText(Path.Combine(_directory, "b"), "second");
        File.WriteAllText(Path.Combine(_directory, "B"), "first");
        File.WriteAllText(Path.Combine(_directory, "sub", "c"), "third");
        File.WriteAllText(Path.Combine(_directory, "empty"), "  \n");
        File.CreateSymbolicLink(Path.Combine(_directory, "link"), Path.Combine(_directory, "b"));
        var corpus = TextCorpus.Load(_directory);
        Assert.Equal(["B", "b", "sub/c"], corpus.Documents.Select(d => d.Name));
        Assert.Equal(["first", "second", "third"], corpus.Documents.Select(d => d.Text));
    }

    [Fact]
    public void AFileIsACorpusOfOneDocument()
    {
        string file = Path.Combine(_directory, "one.txt");
        File.WriteAllText(file, "Just one document.");
        var corpus = TokenizedCorpus.Load(file);
        Assert.Equal(1, corpus.Documents);
        Assert.Equal(Path.GetFullPath(file), corpus.Source);
    }

    [Fact]
    public void AMissingCorpusSaysWhichPath()
    {
        string missing = Path.Combine(_directory, "no-such-corpus");
        var error = Assert.Throws<CorpusException>(() => CorpusTokenSource.Load(missing, seed: 1));
        Assert.Contains(missing, error.Message);
        Assert.Contains("does not exist", error.Message);
        Assert.Contains("--corpus", error.Message);
    }

    [Fact]
    public void AnEmptyCorpusSaysSo()
    {
        var error = Assert.Throws<CorpusException>(() => TokenizedCorpus.Load(_directory));
        Assert.Contains("no text", error.Message);
        Assert.Contains(_directory, error.Message);

        string empty = Path.Combine(_directory, "empty.txt");
        File.WriteAllText(empty, "");
        error = Assert.Throws<CorpusException>(() => TokenizedCorpus.Load(empty));
        Assert.Contains("holds no text", error.Message);

        File.WriteAllBytes(Path.Combine(_directory, "binary"), [0, 1, 2, 0]);
        Assert.Throws<CorpusException>(() => TokenizedCorpus.Load(_directory));
    }

    public void Dispose()
    {
        if (Directory.Exists(_directory)) Directory.Delete(_directory, recursive: true);
    }
}
