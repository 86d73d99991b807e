namespace FlashAttn.Tests.Infrastructure;

/// <summary>
/// Test classes whose checks measure the machine as well as the library (a latency bound after cancelling, the device's
/// free memory) join this collection: xunit runs it with no other test in parallel, so the other tests' work on the two
/// CI cores, or their allocations on the GPU, cannot be mistaken for a slow cancellation or a leak.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class RunsAloneCollection
{
    public const string Name = "Runs alone";
}
