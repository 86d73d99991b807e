using FlashAttn.Cuda;

namespace FlashAttn.Tests.Cuda;

/// <summary>The parts of kernel compilation and caching that need no GPU: cache file format, keys, options, sources.</summary>
[Trait("Category", "Cuda")]
public sealed class ModuleCacheHostTests
{
    private static byte[] FakeCubin(int length)
    {
        var bytes = new byte[length];
        new Random(length).NextBytes(bytes);
        "\u007fELF"u8.CopyTo(bytes);
        return bytes;
    }

    [Fact]
    public void CacheFileRoundTripsAndRejectsDamage()
    {
        byte[] payload = FakeCubin(1000);
        byte[] file = CubinCacheFile.Encode(payload);
        Assert.Equal(payload, CubinCacheFile.Decode(file, out string? problem));
        Assert.Null(problem);

        Assert.Null(CubinCacheFile.Decode(file.AsSpan(0, file.Length - 1), out problem));
        Assert.Contains("truncated", problem);

        Assert.Null(CubinCacheFile.Decode(file.AsSpan(0, 20), out problem));
        Assert.NotNull(problem);

        var flipped = (byte[])file.Clone();
        flipped[^10] ^= 0x40;
        Assert.Null(CubinCacheFile.Decode(flipped, out problem));
        Assert.Contains("checksum", problem);

        var notOurs = (byte[])file.Clone();
        notOurs[0] = (byte)'X';
        Assert.Null(CubinCacheFile.Decode(notOurs, out problem));
        Assert.Contains("header", problem);
    }

    [Fact]
    public void CacheFileRefusesPayloadsThatAreNotElfCubins()
    {
        byte[] file = CubinCacheFile.Encode("this is PTX text, not a cubin\0"u8);
        Assert.Null(CubinCacheFile.Decode(file, out string? problem));
        Assert.Contains("ELF", problem);
    }

    [Fact]
    public void CacheFilesAreWrittenAtomicallyWithoutLeftovers()
    {
        using var dir = new TempDirectory();
        string path = Path.Combine(dir.Path, "nested", "abc.cubin");
        byte[] payload = FakeCubin(4096);
        Assert.True(CubinCacheFile.TryWrite(path, payload));
        Assert.True(CubinCacheFile.TryWrite(path, payload)); // overwrite
        Assert.Equal(payload, CubinCacheFile.TryRead(path, out string? problem));
        Assert.Null(problem);
        Assert.Equal(["abc.cubin"], Directory.GetFiles(Path.GetDirectoryName(path)!).Select(Path.GetFileName));

        File.WriteAllBytes(path, File.ReadAllBytes(path).AsSpan(0, 100).ToArray());
        Assert.Null(CubinCacheFile.TryRead(path, out problem));
        Assert.NotNull(problem);
        Assert.Null(CubinCacheFile.TryRead(Path.Combine(dir.Path, "missing.cubin"), out problem));
        Assert.Null(problem);
    }

    [Fact]
    public void CacheDirectoryPrecedence()
    {
        var env = new Dictionary<string, string>();
        string? Get(string name) => env.GetValueOrDefault(name);
        Assert.Equal(Path.Combine("/home/u", ".cache", "flashattention-net"), ModuleCache.DefaultCacheDirectory(Get, "/home/u"));
        env["XDG_CACHE_HOME"] = "/xdg";
        Assert.Equal(Path.Combine("/xdg", "flashattention-net"), ModuleCache.DefaultCacheDirectory(Get, "/home/u"));
        env["FLASHATTN_CACHE_DIR"] = "/carried/cubins";
        Assert.Equal("/carried/cubins", ModuleCache.DefaultCacheDirectory(Get, "/home/u"));
    }

    [Fact]
    public void OptionsGetTheArchitectureStandardAndDefaultDevice()
    {
        var options = ModuleCache.BuildOptions(["-DFA_HEAD_DIM=128"], "sm_90a");
        Assert.Equal(["-arch=sm_90a", "-DFA_HEAD_DIM=128", "-std=c++17", "-default-device"], options);
        Assert.DoesNotContain("--use_fast_math", options);

        var own = ModuleCache.BuildOptions(["-arch=sm_80", "-std=c++20"], "sm_90a");
        Assert.Equal(["-arch=sm_80", "-std=c++20", "-default-device"], own);
    }

    [Fact]
    public void CacheKeysChangeWithEveryInput()
    {
        var headers = new Dictionary<string, string> { ["a.cuh"] = "int a;" };
        var source = new KernelSource("k.cu", "#include \"a.cuh\"", headers);
        string[] options = ["-arch=sm_90a", "-std=c++17"];
        string key = ModuleCache.ComputeKey(source, "v", options, "sm_90a", (13, 0));

        Assert.Matches("^[0-9a-f]{64}$", key);
        Assert.Equal(key, ModuleCache.ComputeKey(new KernelSource("k.cu", "#include \"a.cuh\"", new Dictionary<string, string>(headers)), "v", options, "sm_90a", (13, 0)));
        Assert.NotEqual(key, ModuleCache.ComputeKey(source, "w", options, "sm_90a", (13, 0)));
        Assert.NotEqual(key, ModuleCache.ComputeKey(source, "v", ["-arch=sm_90a", "-std=c++17", "-DX=1"], "sm_90a", (13, 0)));
        Assert.NotEqual(key, ModuleCache.ComputeKey(source, "v", options, "sm_80", (13, 0)));
        Assert.NotEqual(key, ModuleCache.ComputeKey(source, "v", options, "sm_90a", (12, 8)));
        var otherHeader = new KernelSource("k.cu", "#include \"a.cuh\"", new Dictionary<string, string> { ["a.cuh"] = "int b;" });
        Assert.NotEqual(key, ModuleCache.ComputeKey(otherHeader, "v", options, "sm_90a", (13, 0)));
    }

    [Fact]
    public void EmbeddedKernelSourcesLoadWithTheirHeaders()
    {
        Assert.Contains("flash_fwd.cu", KernelSources.MainFiles);
        var source = KernelSources.Load("flash_fwd.cu");
        Assert.Equal("flash_fwd.cu", source.Name);
        Assert.Contains("#include \"fa_ptx.cuh\"", source.Text);
        foreach (string header in new[] { "fa_ptx.cuh", "fa_params.cuh", "fa_tile.cuh" })
            Assert.True(source.Headers.ContainsKey(header), $"missing header {header}");
        Assert.Same(source, KernelSources.Load("flash_fwd.cu"));
        Assert.Throws<FileNotFoundException>(() => KernelSources.Load("no_such_kernel.cu"));
    }

    [Fact]
    public void CompilingWithoutARealArchitectureIsRejectedBeforeNvrtcIsLoaded()
    {
        var error = Assert.Throws<ArgumentException>(() =>
            NvrtcCompiler.CompileToCubin("", "x.cu", new Dictionary<string, string>(), ["-arch=compute_90"], "x"));
        Assert.Contains("sm_XX", error.Message);
    }

    [Theory]
    [InlineData(8, 0, "sm_80")]
    [InlineData(8, 6, "sm_86")]
    [InlineData(8, 9, "sm_89")]
    [InlineData(9, 0, "sm_90a")]
    [InlineData(10, 0, "sm_100")]
    [InlineData(12, 0, "sm_120")]
    public void ArchitectureNames(int major, int minor, string expected) =>
        Assert.Equal(expected, CudaDevice.ArchitectureFor(major, minor));

    [Fact]
    public void ByteSizesAreReadable()
    {
        Assert.Equal("1.00 PiB", CudaOutOfMemoryException.FormatBytes(1L << 50));
        Assert.Equal("1.50 KiB", CudaOutOfMemoryException.FormatBytes(1536));
        Assert.Equal("12 B", CudaOutOfMemoryException.FormatBytes(12));
    }
}
