using FlashAttn.Cuda;
using FlashAttn.Cuda.Interop;

namespace FlashAttn.Tests.Cuda;

/// <summary>
/// The native-library search, run against a made-up machine (no process-wide state is touched), and the real one:
/// whatever this machine has, failures surface as <see cref="CudaUnavailableException"/> with the search report.
/// </summary>
[Trait("Category", "Cuda")]
public sealed class LibraryResolverTests
{
    private sealed class FakeMachine
    {
        public Dictionary<string, string> Environment { get; } = new();
        public HashSet<string> Folders { get; } = new();
        public HashSet<string> Files { get; } = new();
        public HashSet<string> Loadable { get; } = new();
        public List<string> LoadCalls { get; } = new();

        public LibrarySearchEnvironment ToEnvironment() => new()
        {
            GetEnvironmentVariable = name => Environment.GetValueOrDefault(name),
            IsWindows = false,
            HomeDirectory = "/home/user",
            DirectoryExists = Folders.Contains,
            FileExists = Files.Contains,
            GetDirectories = (parent, pattern) =>
            {
                string prefix = pattern.TrimEnd('*');
                return Folders.Where(f => Path.GetDirectoryName(f) == parent && Path.GetFileName(f).StartsWith(prefix, StringComparison.Ordinal))
                    .OrderDescending().ToArray();
            },
            Load = path =>
            {
                LoadCalls.Add(path);
                return Loadable.Contains(path) ? (42, null) : (0, "simulated loader error: wrong ELF class");
            },
        };

        public void AddFolderChain(string folder)
        {
            for (string? f = folder; !string.IsNullOrEmpty(f) && f != "/"; f = Path.GetDirectoryName(f))
                Folders.Add(f);
        }
    }

    [Fact]
    public void FailureListsEverySearchedPlaceInOrderAndTheFix()
    {
        var machine = new FakeMachine();
        machine.Environment["FLASHATTN_NVRTC_LIBRARY"] = "/bogus/env/libnvrtc.so.13";
        machine.Environment["CUDA_PATH"] = "/bogus/cuda";
        const string wheel = "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib";
        machine.AddFolderChain(wheel);
        machine.Files.Add(wheel + "/libnvrtc.so.13");

        var spec = LibrarySpec.For(CudaLibraryKind.Nvrtc, isWindows: false);
        var result = LibrarySearch.Search(spec, "/bogus/explicit/libnvrtc.so.13", machine.ToEnvironment());

        Assert.Equal(0, result.Handle);
        string message = result.FailureMessage;
        string[] expectedInOrder =
        [
            "libnvrtc.so.13 or libnvrtc.so.12",
            "CudaLibraryPaths.Nvrtc = /bogus/explicit/libnvrtc.so.13",
            "/bogus/explicit/libnvrtc.so.13: not found",
            "FLASHATTN_NVRTC_LIBRARY = /bogus/env/libnvrtc.so.13",
            "/bogus/env/libnvrtc.so.13: not found",
            "/bogus/cuda/lib64: folder not found",
            "/bogus/cuda/lib: folder not found",
            "$CUDA_HOME: not set",
            "/usr/local/cuda/lib64: folder not found",
            "libnvrtc.so.13 on the loader search path",
            "libnvrtc.so.12 on the loader search path",
            wheel + "/libnvrtc.so.13: simulated loader error: wrong ELF class",
            wheel + "/libnvrtc.so.12: not found",
            "pip install nvidia-cuda-nvrtc",
            "FLASHATTN_NVRTC_LIBRARY=/path/to/libnvrtc.so.13",
        ];
        int position = -1;
        foreach (string expected in expectedInOrder)
        {
            int found = message.IndexOf(expected, position + 1, StringComparison.Ordinal);
            Assert.True(found > position, $"'{expected}' missing or out of order in:\n{message}");
            position = found;
        }
    }

    [Fact]
    public void StopsAtTheFirstLibraryThatLoadsAndPrefersTheNewerVersion()
    {
        var machine = new FakeMachine();
        machine.Environment["CUDA_HOME"] = "/cuda";
        machine.AddFolderChain("/cuda/lib64");
        machine.Files.Add("/cuda/lib64/libnvrtc.so.13");
        machine.Files.Add("/cuda/lib64/libnvrtc.so.12");
        machine.Loadable.Add("/cuda/lib64/libnvrtc.so.13");
        machine.Loadable.Add("/cuda/lib64/libnvrtc.so.12");

        var result = LibrarySearch.Search(LibrarySpec.For(CudaLibraryKind.Nvrtc, false), null, machine.ToEnvironment());

        Assert.Equal(42, result.Handle);
        Assert.Equal("/cuda/lib64/libnvrtc.so.13", result.LoadedFrom);
        Assert.Equal(["/cuda/lib64/libnvrtc.so.13"], machine.LoadCalls);
        Assert.Contains("CudaLibraryPaths.Nvrtc: not set", result.Tried);
    }

    [Fact]
    public void AnExplicitFolderIsSearchedForTheLibraryNames()
    {
        var machine = new FakeMachine();
        machine.AddFolderChain("/my/libs");
        machine.Files.Add("/my/libs/libnvrtc.so.12");
        machine.Loadable.Add("/my/libs/libnvrtc.so.12");

        var result = LibrarySearch.Search(LibrarySpec.For(CudaLibraryKind.Nvrtc, false), "/my/libs", machine.ToEnvironment());

        Assert.Equal("/my/libs/libnvrtc.so.12", result.LoadedFrom);
    }

    [Fact]
    public void CublasLoadsItsLtCompanionFromTheSameFolderFirst()
    {
        var machine = new FakeMachine();
        machine.AddFolderChain("/usr/local/cuda/lib64");
        machine.Files.Add("/usr/local/cuda/lib64/libcublas.so.13");
        machine.Files.Add("/usr/local/cuda/lib64/libcublasLt.so.13");
        machine.Loadable.Add("/usr/local/cuda/lib64/libcublas.so.13");
        machine.Loadable.Add("/usr/local/cuda/lib64/libcublasLt.so.13");

        var result = LibrarySearch.Search(LibrarySpec.For(CudaLibraryKind.Cublas, false), null, machine.ToEnvironment());

        Assert.Equal("/usr/local/cuda/lib64/libcublas.so.13", result.LoadedFrom);
        Assert.Equal(["/usr/local/cuda/lib64/libcublasLt.so.13", "/usr/local/cuda/lib64/libcublas.so.13"], machine.LoadCalls);
    }

    [Fact]
    public void NcclIsFoundInPyTorchsNvidiaWheel()
    {
        var machine = new FakeMachine();
        const string wheel = "/opt/torch/.venv/lib/python3.12/site-packages/nvidia/nccl/lib";
        machine.AddFolderChain(wheel);
        machine.Files.Add(wheel + "/libnccl.so.2");
        machine.Loadable.Add(wheel + "/libnccl.so.2");

        var result = LibrarySearch.Search(LibrarySpec.For(CudaLibraryKind.Nccl, false), null, machine.ToEnvironment());

        Assert.Equal(wheel + "/libnccl.so.2", result.LoadedFrom);
    }

    [Fact]
    public void MissingNcclNamesTheSettingsAndTheFix()
    {
        var machine = new FakeMachine();
        machine.Environment["FLASHATTN_NCCL_LIBRARY"] = "/bogus/libnccl.so.2";

        var result = LibrarySearch.Search(LibrarySpec.For(CudaLibraryKind.Nccl, false), null, machine.ToEnvironment());

        Assert.Equal(0, result.Handle);
        foreach (string expected in new[] { "libnccl.so.2", "/bogus/libnccl.so.2: not found", "/usr/lib/x86_64-linux-gnu", "libnccl2",
                     "FLASHATTN_NCCL_LIBRARY=/path/to/libnccl.so.2", "CudaLibraryPaths.Nccl" })
            Assert.Contains(expected, result.FailureMessage, StringComparison.Ordinal);
        Assert.Contains("Linux only", LibrarySpec.For(CudaLibraryKind.Nccl, isWindows: true).Fix, StringComparison.Ordinal);
    }

    [Fact]
    public void TheDriverIsLookedForOnTheLoaderPathAndDriverFoldersNotInTheToolkit()
    {
        var machine = new FakeMachine();
        machine.Environment["CUDA_PATH"] = "/cuda";
        machine.AddFolderChain("/usr/local/cuda/lib64");

        var result = LibrarySearch.Search(LibrarySpec.For(CudaLibraryKind.Driver, false), null, machine.ToEnvironment());

        Assert.Equal(0, result.Handle);
        Assert.DoesNotContain(result.Tried, line => line.Contains("/usr/local/cuda", StringComparison.Ordinal) || line.Contains("CUDA_PATH", StringComparison.Ordinal));
        Assert.Contains(result.Tried, line => line.StartsWith("libcuda.so.1 on the loader search path", StringComparison.Ordinal));
        Assert.Contains("/usr/lib/x86_64-linux-gnu: folder not found", result.Tried);
        Assert.Contains("install the NVIDIA driver", result.FailureMessage);
        Assert.Contains("FLASHATTN_CUDA_LIBRARY=/path/to/libcuda.so.1", result.FailureMessage);
    }

    [Fact]
    public void PipFoldersUnderVirtualEnvAndUserSitePackagesAreSearched()
    {
        var machine = new FakeMachine();
        machine.Environment["VIRTUAL_ENV"] = "/work/venv";
        machine.AddFolderChain("/work/venv/lib/python3.11/site-packages/nvidia/cuda_nvrtc/lib");
        machine.AddFolderChain("/home/user/.local/lib/python3.10/site-packages/nvidia/cu13/lib");
        machine.Files.Add("/home/user/.local/lib/python3.10/site-packages/nvidia/cu13/lib/libnvrtc.so.13");
        machine.Loadable.Add("/home/user/.local/lib/python3.10/site-packages/nvidia/cu13/lib/libnvrtc.so.13");

        var result = LibrarySearch.Search(LibrarySpec.For(CudaLibraryKind.Nvrtc, false), null, machine.ToEnvironment());

        Assert.Equal("/home/user/.local/lib/python3.10/site-packages/nvidia/cu13/lib/libnvrtc.so.13", result.LoadedFrom);
        Assert.Contains("/work/venv/lib/python3.11/site-packages/nvidia/cuda_nvrtc/lib/libnvrtc.so.13: not found", result.Tried);
    }

    [Fact]
    public void OnThisMachineTheDefaultDeviceIsEitherUsableOrExplainsWhyNot()
    {
        bool ok = CudaDevice.TryGetDefault(out CudaDevice? device, out string reason);
        if (ok)
        {
            Assert.NotNull(device);
            Assert.Equal("", reason);
            return;
        }
        Assert.Null(device);
        Assert.Contains("Fix", reason);
        var thrown = Assert.Throws<CudaUnavailableException>(() => CudaDevice.Default);
        Assert.Contains("Fix", thrown.Message);
    }

    [Fact]
    public void AnImportWithoutItsLibraryThrowsCudaUnavailableNotDllNotFound()
    {
        // Goes through the registered DllImportResolver: with no driver the resolver's report comes out unwrapped.
        var error = Record.Exception(() => CudaDriver.cuDriverGetVersion(out _));
        Assert.True(error is null or CudaUnavailableException, error?.ToString());
        if (error is not null)
            Assert.Contains("Searched, in order", error.Message);

        var nvrtcError = Record.Exception(() => Nvrtc.nvrtcVersion(out _, out _));
        Assert.True(nvrtcError is null or CudaUnavailableException, nvrtcError?.ToString());
    }

    [Fact]
    public void ErrorDescriptionsNeverThrowEvenWithoutTheDriver()
    {
        Assert.Contains("(2)", CudaException.Describe(CudaResult.OutOfMemory));
        Assert.Contains("(12345)", CudaException.Describe((CudaResult)12345));
        var sticky = new CudaException(CudaResult.IllegalAddress, "cuCtxSynchronize()");
        Assert.Contains("cuCtxSynchronize()", sticky.Message);
        Assert.Contains("sticky", sticky.Message);
        Assert.False(string.IsNullOrWhiteSpace(NvrtcException.Describe(NvrtcResult.Compilation)));
        Assert.Contains("CUBLAS_STATUS_INVALID_VALUE", new CublasException(CublasStatus.InvalidValue, "gemm").Message);
    }

    [Fact]
    public void ThrowIfFailedNamesTheCallAndMapsOutOfMemory()
    {
        var error = Assert.Throws<CudaException>(() => CudaException.ThrowIfFailed(CudaResult.InvalidValue));
        Assert.Contains("CudaResult.InvalidValue", error.Expression);
        Assert.Equal(CudaResult.InvalidValue, error.Result);
        Assert.Throws<CudaOutOfMemoryException>(() => CudaException.ThrowIfFailed(CudaResult.OutOfMemory));
        CudaException.ThrowIfFailed(CudaResult.Success);
    }
}
