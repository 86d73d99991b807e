using System.Diagnostics.CodeAnalysis;
using Microsoft.ML.Tokenizers;

namespace FlashAttn.Training.Data;

/// <summary>
/// GPT-2's byte-level BPE tokenizer (OpenAI's r50k_base encoding: 50,256 merges-derived tokens plus &lt;|endoftext|&gt;, so
/// ids 0..50256 and a vocabulary of <see cref="VocabSize"/>), from Microsoft.ML.Tokenizers with the vocabulary embedded in the
/// Microsoft.ML.Tokenizers.Data.R50kBase package: nothing is downloaded at run time.
/// </summary>
public sealed class Gpt2Tokenizer
{
    /// <summary>Ids the tokenizer can produce: 0..50256.</summary>
    public const int VocabSize = 50257;

    /// <summary>The id of &lt;|endoftext|&gt;, which separates documents.</summary>
    public const int EndOfText = 50256;

    /// <summary>How reports name it.</summary>
    public const string Name = "GPT-2 BPE (r50k_base, 50257 ids; Microsoft.ML.Tokenizers 2.0.1)";

    private const string EndOfTextToken = "<|endoftext|>";

    private static readonly Lazy<Gpt2Tokenizer> SharedInstance = new(() => new Gpt2Tokenizer(), LazyThreadSafetyMode.ExecutionAndPublication);

    private readonly TiktokenTokenizer _tokenizer;

    // The vocabulary lives in the data package's assembly, which Microsoft.ML.Tokenizers loads by name: keep it in trimmed publishes.
    [DynamicDependency(DynamicallyAccessedMemberTypes.All, "Microsoft.ML.Tokenizers.R50kBaseTokenizerData", "Microsoft.ML.Tokenizers.Data.R50kBase")]
    private Gpt2Tokenizer()
    {
        _tokenizer = TiktokenTokenizer.CreateForEncoding("r50k_base");
        if (_tokenizer.SpecialTokens is not { } special || !special.TryGetValue(EndOfTextToken, out int id) || id != EndOfText)
            throw new InvalidOperationException($"r50k_base from Microsoft.ML.Tokenizers does not map {EndOfTextToken} to {EndOfText}; the tokenizer package changed.");
    }

    /// <summary>The process-wide instance (loading the vocabulary takes some 50 ms).</summary>
    public static Gpt2Tokenizer Shared => SharedInstance.Value;

    /// <summary>The ids of <paramref name="text"/>.</summary>
    public int[] Encode(string text) => [.. _tokenizer.EncodeToIds(text)];

    /// <summary>The text of <paramref name="ids"/>.</summary>
    public string Decode(IEnumerable<int> ids) => _tokenizer.Decode(ids);
}
