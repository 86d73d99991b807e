#!/usr/bin/env bash
# Runs on the GPU machine over a carried artifacts/device/ (see publish-device.sh):
#   tests  - the whole suite (CUDA cases included), the two Hopper classes in processes of their own beside the rest;
#            TRX and logs under $OUT (tests*.trx, tests*.log)
#   bench  - flash-attn bench on the GPU with the PyTorch peers, results under $OUT
#   sweep  - issue 7's sweep in one bench invocation with the PyTorch peers: bf16 and fp16, head dims 64/128/256, causal
#            and not, seqlen 512-16k at 16k tokens, fwd and fwd+bwd (about 330 s on the H100 by the 17:12Z bf16 half)
#   decode - only the KV-cache decoding rows (flash-attn bench --decode-only) with their PyTorch peers, about a minute
#   sanitize - compute-sanitizer (scripts/sanitize.sh; tools after the mode, default all four) into $OUT/sanitizer
#   train  - flash-attn train (issue 8: LLaMA-7B-shaped training, unfused vs TorchSharp SDPA vs ours) into $OUT/train;
#            arguments after the mode go to it, e.g. `bash scripts/run-device.sh train --tiny` for a smoke run
# The cubin cache lives in artifacts/carry/cubin-cache (carried along when present).
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
out=${OUT:-/tmp/out}
mkdir -p "$out"
if [ -f artifacts/carry/device.tar.xz ]; then tar -C artifacts -xJf artifacts/carry/device.tar.xz; fi
[ -x artifacts/device/tests/FlashAttention.Tests ] || { echo "no published build: run scripts/publish-device.sh first"; exit 2; }
export FLASHATTN_CACHE_DIR="$PWD/artifacts/carry/cubin-cache"
export DOTNET_gcServer=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0
# TorchSharp's native library resolves against the machine's libtorch (DEVICE.md): the tests and `flash-attn train` need it.
torch_lib=/opt/torch/.venv/lib/python3.12/site-packages/torch/lib
if [ "$what" = tests ] || [ "$what" = all ]; then
  # The two Hopper classes check every case against float64 references on one core each (several minutes serially),
  # so they run as processes of their own beside the rest of the suite: one device call holds the whole suite.
  hopper=(FlashAttn.Tests.Cuda.CudaHopperForwardTests FlashAttn.Tests.Cuda.CudaHopperBackwardTests)
  suite=artifacts/device/tests/FlashAttention.Tests
  export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  $suite -noColor -class- "${hopper[0]}" -class- "${hopper[1]}" -result-trx "$out/tests.trx" -result-markdown "$out/tests.md" > "$out/tests.log" 2>&1 &
  $suite -noColor -class "${hopper[0]}" -result-trx "$out/tests-hopper-forward.trx" > "$out/tests-hopper-forward.log" 2>&1 &
  $suite -noColor -class "${hopper[1]}" -result-trx "$out/tests-hopper-backward.trx" > "$out/tests-hopper-backward.log" 2>&1 &
  for job in $(jobs -p); do wait "$job" || status=1; done
  for log in "$out"/tests.log "$out"/tests-hopper-*.log; do
    echo "== $(basename "$log")"; grep -E "Total:|\[FAIL\]" "$log" | head -20
  done
fi
if { [ "$what" = bench ] || [ "$what" = all ]; } && [ -x artifacts/device/cli/flash-attn ]; then
  cli=artifacts/device/cli/flash-attn
  { $cli warmup && $cli check && $cli bench --out "$out/bench"; } 2>&1 | tee "$out/bench.log" | grep -vE "^│ (fp32|bf16|fp16) " | tail -80
fi
if [ "$what" = sweep ] && [ -x artifacts/device/cli/flash-attn ]; then
  artifacts/device/cli/flash-attn bench --dtype bf16 fp16 --headdims 64 128 256 --seqlens 512 1024 2048 4096 8192 16384 \
    --modes fwd fwdbwd --naive-max-seqlen 0 --no-features --no-decode --no-unfused --out "$out/sweep" 2>&1 | tee "$out/sweep.log" \
    | grep -E "(bf16|fp16)  │|kernel:" | head -160
  status=${PIPESTATUS[0]}
fi
if [ "$what" = decode ] && [ -x artifacts/device/cli/flash-attn ]; then
  artifacts/device/cli/flash-attn bench --decode-only --out "$out/bench" 2>&1 | tee "$out/decode.log" | tail -60
  status=${PIPESTATUS[0]}
fi
if [ "$what" = sanitize ]; then
  bash scripts/sanitize.sh "${@:2}"
  status=$?
fi
if [ "$what" = train ]; then
  [ -x artifacts/device/cli/flash-attn ] || { echo "no published CLI: run scripts/publish-device.sh first"; exit 2; }
  LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    artifacts/device/cli/flash-attn train --out "$out/train" "${@:2}" 2>&1 | tee "$out/train.log" | tail -80
  status=${PIPESTATUS[0]}
fi
exit $status
