using FlashAttn.Cuda;

namespace FlashAttn.Cli.Gpu;

/// <summary>Times GPU work with CUDA events on the stream it runs on: warm-up launches, then the median of single runs.</summary>
internal static class GpuTimer
{
    public static (double Ms, int Runs) Median(Action launch, CudaStream stream, int warmup = 3, int runs = 20)
    {
        for (int i = 0; i < warmup; i++) launch();
        stream.Synchronize();
        using var start = CudaEvent.Create();
        using var end = CudaEvent.Create();
        var times = new double[runs];
        for (int i = 0; i < runs; i++)
        {
            start.Record(stream);
            launch();
            end.Record(stream);
            end.Synchronize();
            times[i] = CudaEvent.ElapsedMilliseconds(start, end);
        }
        Array.Sort(times);
        return (times[runs / 2], runs);
    }
}
