"""Decode peer timings for `flash-attn bench`: PyTorch SDPA on one query token per sequence over a full bf16 KV cache,
with the default backend choice (impl torch-sdpa) and, where they take the shape, the flash and cuDNN backends forced
(torch-flash, torch-cudnn). Timed like ours: calls back to back on one stream between one pair of CUDA events, cycling
through buffer sets whose K and V exceed 4x the L2 cache, milliseconds per call = batch time / calls, median of 9
batches. The copy bandwidth (y.copy_(x) on 1 GiB, read + write bytes / s) is measured in the same process.

usage: python3 torch_decode.py SHAPES.json RUN_ISO_TIME > rows.json
SHAPES.json: [{"batch":8,"seqlen_q":1,"seqlen_k":32768,"heads":32,"heads_kv":8,"headdim":128,"dtype":"bf16"}, ...]
Prints a JSON array of rows in bench/results format (op "decode", with kv_tbps and copy_tbps).
"""
import json
import math
import statistics
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {"torch-sdpa": None, "torch-flash": SDPBackend.FLASH_ATTENTION, "torch-cudnn": SDPBackend.CUDNN_ATTENTION}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
COPY_BYTES = 1 << 30
ROTATION_L2_MULTIPLE = 4
MAX_BATCH_CALLS = 4096
REPEATS = 9


def back_to_back_ms(call, min_calls, min_batch_ms=10.0, repeats=REPEATS):
    """Milliseconds per call: batches of calls queued back to back between two events, median over repeats.
    call(i) gets a running index to cycle buffer sets; the first batch warms up, the second sizes the batches."""
    counter = iter(range(1 << 62))
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def batch(calls):
        start.record()
        for _ in range(calls):
            call(next(counter))
        end.record()
        end.synchronize()
        return start.elapsed_time(end)

    batch(min_calls)
    estimate = max(batch(min_calls) / min_calls, 1e-4)
    calls = int(min(max(min_calls, math.ceil(min_batch_ms / estimate)), max(min_calls, MAX_BATCH_CALLS)))
    return statistics.median(batch(calls) / calls for _ in range(repeats))


def copy_tbps():
    x = torch.ones(COPY_BYTES // 2, dtype=torch.bfloat16, device="cuda")
    y = torch.zeros_like(x)
    ms = back_to_back_ms(lambda _: y.copy_(x), 2, min_batch_ms=20.0)
    del x, y
    torch.cuda.empty_cache()
    return 2 * COPY_BYTES / ms / 1e9


def l2_bytes():
    return getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 0) or 50 << 20


def measure(shape, l2, copy, device, run):
    b, sk, h, hk, d = (shape[k] for k in ("batch", "seqlen_k", "heads", "heads_kv", "headdim"))
    dtype = DTYPES[shape["dtype"]]
    element = torch.finfo(dtype).bits // 8
    kv_bytes = 2 * b * sk * hk * d * element
    sets = max(2, math.ceil(ROTATION_L2_MULTIPLE * l2 / kv_bytes))
    # SDPA's layout (batch, heads, seqlen, headdim), contiguous: what a PyTorch decoding loop would hold.
    qs = [torch.randn(b, h, 1, d, device="cuda", dtype=dtype) for _ in range(sets)]
    ks = [torch.randn(b, hk, sk, d, device="cuda", dtype=dtype) for _ in range(sets)]
    vs = [torch.randn(b, hk, sk, d, device="cuda", dtype=dtype) for _ in range(sets)]

    def call(i):
        j = i % sets
        return F.scaled_dot_product_attention(qs[j], ks[j], vs[j], enable_gqa=True)

    rows = []
    for impl, backend in BACKENDS.items():
        try:
            if backend is None:
                ms = back_to_back_ms(call, sets)
            else:
                with sdpa_kernel([backend]):
                    ms = back_to_back_ms(call, sets)
        except Exception as error:  # a backend that does not take this shape is skipped, and said so
            print(f"{impl} skipped b{b} cache {sk}: {str(error).splitlines()[0][:120]}", file=sys.stderr)
            continue
        rows.append(dict(impl=impl, op="decode", mode="fwd", dtype=shape["dtype"], batch=b, seqlen_q=1, seqlen_k=sk, heads=h,
                         heads_kv=hk, headdim=d, causal=False, ms=ms, tflops=4.0 * b * sk * h * d / ms / 1e9,
                         kv_tbps=kv_bytes / ms / 1e9, copy_tbps=copy, runs=REPEATS, device=device, run=run))
    del qs, ks, vs
    torch.cuda.empty_cache()
    return rows


def main():
    shapes = json.load(open(sys.argv[1]))
    run = sys.argv[2]
    device = torch.cuda.get_device_name()
    copy = copy_tbps()
    l2 = l2_bytes()
    rows = []
    for shape in shapes:
        try:
            rows.extend(measure(shape, l2, copy, device, run))
        except torch.cuda.OutOfMemoryError as error:
            print(f"skipped {shape}: {str(error).splitlines()[0][:120]}", file=sys.stderr)
            torch.cuda.empty_cache()
    json.dump(rows, sys.stdout)


if __name__ == "__main__":
    main()
