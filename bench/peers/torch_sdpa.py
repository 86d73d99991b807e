"""Peer timings for `flash-attn bench`: PyTorch SDPA's flash (FlashAttention-2), cuDNN and math (unfused)
backends on the shapes the bench asks for, timed like ours (CUDA events, warm-up, median of runs).

usage: python3 torch_sdpa.py SHAPES.json RUN_ISO_TIME > rows.json
SHAPES.json: [{"batch":4,"seqlen_q":4096,"seqlen_k":4096,"heads":16,"heads_kv":16,"headdim":128,
               "causal":true,"dtype":"bf16","mode":"fwd"}, ...]
Prints a JSON array of rows in bench/results format (impl torch-flash | torch-cudnn | torch-math).
"""
import json
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"torch-flash": SDPBackend.FLASH_ATTENTION, "torch-cudnn": SDPBackend.CUDNN_ATTENTION, "torch-math": SDPBackend.MATH}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def flops(shape):
    f = 4.0 * shape["batch"] * shape["heads"] * shape["seqlen_q"] * shape["seqlen_k"] * shape["headdim"]
    f /= 2 if shape["causal"] else 1
    return f * {"fwd": 1.0, "bwd": 2.5, "fwdbwd": 3.5}[shape["mode"]]


def median_ms(fn, warmup=5, runs=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def measure(impl, shape):
    b, sq, sk, h, hk, d = (shape[k] for k in ("batch", "seqlen_q", "seqlen_k", "heads", "heads_kv", "headdim"))
    dtype, causal, mode = DTYPES[shape["dtype"]], shape["causal"], shape["mode"]
    # SDPA takes (batch, heads, seqlen, headdim); build from our (batch, seqlen, heads, headdim) layout.
    q = torch.randn(b, sq, h, d, device="cuda", dtype=dtype).transpose(1, 2).requires_grad_(mode != "fwd")
    k = torch.randn(b, sk, hk, d, device="cuda", dtype=dtype).transpose(1, 2).requires_grad_(mode != "fwd")
    v = torch.randn(b, sk, hk, d, device="cuda", dtype=dtype).transpose(1, 2).requires_grad_(mode != "fwd")
    gqa = h != hk
    with sdpa_kernel([BACKENDS[impl]]):
        def forward():
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
        if mode == "fwd":
            fn = forward
        else:
            grad = torch.randn(b, h, sq, d, device="cuda", dtype=dtype)
            def fn():
                torch.autograd.grad(forward(), (q, k, v), grad)
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        # Workspace = peak beyond the inputs, less the outputs (O; and dQ, dK, dV with backward).
        element = torch.finfo(dtype).bits // 8
        outputs = b * sq * h * d * element * (1 if mode == "fwd" else 2) + (0 if mode == "fwd" else 2 * b * sk * hk * d * element)
        workspace = max(0, torch.cuda.max_memory_allocated() - base - outputs) / 2**20
        ms = median_ms(fn)
    return ms, workspace


def main():
    shapes = json.load(open(sys.argv[1]))
    run = sys.argv[2]
    device = torch.cuda.get_device_name()
    rows = []
    for shape in shapes:
        for impl in BACKENDS:
            if impl == "torch-math" and shape["seqlen_q"] * shape["seqlen_k"] * shape["batch"] * shape["heads"] > 2**32:
                continue  # the materialised score matrix would not fit
            try:
                ms, workspace = measure(impl, shape)
            except Exception as error:  # a backend that does not take this shape is skipped, and said so
                print(f"{impl} skipped {shape}: {str(error).splitlines()[0][:120]}", file=sys.stderr)
                continue
            finally:
                torch.cuda.empty_cache()
            rows.append(dict(impl=impl, op="attention", **shape, ms=ms, tflops=flops(shape) / ms / 1e9,
                             workspace_mib=workspace, device=device, run=run))
    json.dump(rows, sys.stdout)


if __name__ == "__main__":
    main()
