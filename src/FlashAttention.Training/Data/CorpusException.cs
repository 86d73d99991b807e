namespace FlashAttn.Training.Data;

/// <summary>The training corpus cannot be used: its path does not exist, or it holds no text. The message names the path and what to do.</summary>
public sealed class CorpusException(string message) : IOException(message);
