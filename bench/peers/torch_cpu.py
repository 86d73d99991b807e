"""Peer timings for `flash-attn bench` on the CPU: PyTorch's scaled_dot_product_attention on CPU tensors, timed
like our CPU rows (wall clock, at least 0.5 s of warm-up, median of the timed runs, at most 3 when one takes over 2 s).

usage: python3 torch_cpu.py SHAPES.json RUN_ISO_TIME [THREADS [REPEATS]] > rows.json
SHAPES.json: the list torch_sdpa.py takes: [{"batch":1,"seqlen_q":2048,"seqlen_k":2048,"heads":8,"heads_kv":8,
             "headdim":128,"causal":true,"dtype":"fp32","mode":"fwd"}, ...]; dtype fp32 | bf16 | fp16,
             mode fwd | bwd | fwdbwd.
THREADS: torch.set_num_threads (default: every core this process may run on). REPEATS: timed runs (default 5).
Prints a JSON array of rows in bench/results format (impl torch-cpu) with runs, threads, torch_version and
cpu_capability (the instruction set torch's CPU kernels were dispatched to, e.g. AVX512).
"""
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
WARMUP_S, SLOW_S, SLOW_REPEATS = 0.5, 2.0, 3


def flops(shape):
    f = 4.0 * shape["batch"] * shape["heads"] * shape["seqlen_q"] * shape["seqlen_k"] * shape["headdim"]
    f /= 2 if shape["causal"] else 1
    return f * {"fwd": 1.0, "bwd": 2.5, "fwdbwd": 3.5}[shape["mode"]]


def median_ms(fn, repeats):
    # The same rule as the CLI's BenchTimer, so both sides get the same warm-up and the same number of runs.
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        fn()
        last = time.perf_counter() - t0
        if time.perf_counter() - start >= WARMUP_S:
            break
    runs = min(repeats, SLOW_REPEATS) if last > SLOW_S else repeats
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), runs


def measure(shape, repeats):
    b, sq, sk, h, hk, d = (shape[k] for k in ("batch", "seqlen_q", "seqlen_k", "heads", "heads_kv", "headdim"))
    dtype, causal, mode = DTYPES[shape["dtype"]], shape["causal"], shape["mode"]
    generator = torch.Generator().manual_seed(42)

    def uniform(heads, seqlen, grad):
        # (batch, heads, seqlen, headdim), contiguous: the layout SDPA takes. Uniform in [-1, 1) like our inputs.
        x = (torch.rand(b, heads, seqlen, d, generator=generator) * 2 - 1).to(dtype)
        return x.requires_grad_(grad)

    grad = mode != "fwd"
    q, k, v = uniform(h, sq, grad), uniform(hk, sk, grad), uniform(hk, sk, grad)
    d_out = uniform(h, sq, False)

    def forward():
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=h != hk)

    if mode == "fwd":
        fn = forward
    elif mode == "bwd":
        # Backward alone, as our "bwd" rows: one forward up front, its graph kept for every timed backward.
        out = forward()

        def fn():
            torch.autograd.grad(out, (q, k, v), d_out, retain_graph=True)
    else:
        def fn():
            torch.autograd.grad(forward(), (q, k, v), d_out)
    return median_ms(fn, repeats)


def cpu_capability():
    # torch.backends.cpu is not imported by `import torch` in every version; a missing one only loses this label.
    try:
        import torch.backends.cpu
        return torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        return ""


def cpu_name():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def main():
    shapes = json.load(open(sys.argv[1]))
    run = sys.argv[2]
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else len(os.sched_getaffinity(0))
    repeats = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    torch.set_num_threads(threads)
    capability = cpu_capability()
    device = cpu_name()
    rows = []
    for shape in shapes:
        try:
            ms, runs = measure(shape, repeats)
        except Exception as error:  # a shape torch refuses is skipped, and said so on stderr
            reason = (str(error).splitlines() or [type(error).__name__])[0][:120]
            print(f"torch-cpu skipped {shape}: {reason}", file=sys.stderr)
            continue
        row = dict(shape)
        row.update(impl="torch-cpu", op="attention", ms=ms, tflops=flops(shape) / ms / 1e9, runs=runs,
                   threads=torch.get_num_threads(), torch_version=torch.__version__, cpu_capability=capability,
                   device=device, run=run)
        rows.append(row)
    json.dump(rows, sys.stdout)


if __name__ == "__main__":
    main()
