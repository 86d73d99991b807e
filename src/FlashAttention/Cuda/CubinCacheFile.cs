using System.Buffers.Binary;
using System.Security.Cryptography;

namespace FlashAttn.Cuda;

/// <summary>
/// The on-disk format of a cached cubin: the 8-byte magic "FACUBIN1", the payload length (int64, little endian),
/// the SHA-256 of the payload (32 bytes), then the payload. A file that is short, long, or whose hash does not match
/// (a crash mid-write on a file system without atomic rename, a disk error, tampering) is rejected, and so is a payload
/// that is not an ELF image: cuModuleLoadData would read it as NUL-terminated PTX text.
/// Files are written to a temporary name in the same folder and renamed over the target, so readers never see a
/// partial file and concurrent writers (threads or processes) simply race to write identical content.
/// </summary>
internal static class CubinCacheFile
{
    private static ReadOnlySpan<byte> Magic => "FACUBIN1"u8;
    internal const int HeaderLength = 8 + 8 + 32;

    public static byte[] Encode(ReadOnlySpan<byte> payload)
    {
        var file = new byte[HeaderLength + payload.Length];
        Magic.CopyTo(file);
        BinaryPrimitives.WriteInt64LittleEndian(file.AsSpan(8), payload.Length);
        SHA256.HashData(payload, file.AsSpan(16, 32));
        payload.CopyTo(file.AsSpan(HeaderLength));
        return file;
    }

    /// <summary>The payload, or null (with the reason) when the file is not a complete, intact cache file.</summary>
    public static byte[]? Decode(ReadOnlySpan<byte> file, out string? problem)
    {
        problem = null;
        if (file.Length < HeaderLength || !file[..8].SequenceEqual(Magic))
        {
            problem = "not a cubin cache file (bad header)";
            return null;
        }
        long length = BinaryPrimitives.ReadInt64LittleEndian(file[8..]);
        if (length != file.Length - HeaderLength)
        {
            problem = $"truncated or padded: header says {length} bytes, file holds {file.Length - HeaderLength}";
            return null;
        }
        var payload = file[HeaderLength..];
        if (!payload.StartsWith("\u007fELF"u8))
        {
            // Only cubins (ELF) are ever stored; anything else would reach the driver as PTX text.
            problem = "payload is not an ELF cubin";
            return null;
        }
        Span<byte> hash = stackalloc byte[32];
        SHA256.HashData(payload, hash);
        if (!hash.SequenceEqual(file.Slice(16, 32)))
        {
            problem = "checksum mismatch";
            return null;
        }
        return payload.ToArray();
    }

    /// <summary>Reads and checks a cache file: the payload, or null when it is missing or unreadable (<paramref name="problem"/> set when it exists but is bad).</summary>
    public static byte[]? TryRead(string path, out string? problem)
    {
        problem = null;
        byte[] file;
        try
        {
            if (!File.Exists(path))
                return null;
            file = File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            problem = e.Message;
            return null;
        }
        return Decode(file, out problem);
    }

    /// <summary>Writes atomically (temporary file + rename). Returns false, without throwing, when the folder is not writable.</summary>
    public static bool TryWrite(string path, ReadOnlySpan<byte> payload)
    {
        string? folder = Path.GetDirectoryName(path);
        string temporary = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        try
        {
            if (!string.IsNullOrEmpty(folder))
                Directory.CreateDirectory(folder);
            using (var stream = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None))
            {
                stream.Write(Encode(payload));
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporary, path, overwrite: true);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(temporary);
            return false;
        }
    }

    public static void TryDelete(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
    }
}
