#!/usr/bin/env bash
# compute-sanitizer over our kernels on the GPU machine (issue 11): memcheck, racecheck, synccheck and initcheck,
# each over workloads that between them launch every kernel variant we ship:
#   check   - `flash-attn check --path cuda` (fwd+bwd of every feature at fp16 and bf16, KV-cache decode/prefill)
#   tests   - the CUDA test classes that cover the fused kernels (odd head dims, varlen, dropout, probabilities, split-KV,
#             paged caches, hostile numbers, deterministic backward, threads and streams), small shapes
#   race    - racecheck's share of `tests` (racecheck over all of it takes more than 8 minutes): what `check` does not launch,
#             varlen, returned probabilities, deterministic and wide-head-dim backward, split-KV decode with paged caches
#   variants - CudaEveryVariantTests: every compile-time kernel variant the library can launch (each bucket, element type
#             and combination of dropout, softcap, ALiBi and deterministic dQ; the narrow-window tiling; decode with each
#             score option), once each on a small shape, the sm_90 forward's variants included
#   hopper  - the sm_90 forward's variants alone (CudaEveryVariantTests.HopperForwardMatchesTheReference): each bucket,
#             element type, softcap, ALiBi and the narrow-window tiling, with the FA2 backward behind them
#   unfused-rows - the unfused baseline's softmax and softmax-gradient row kernels alone, fed from the host
#             (UnfusedSoftmaxKernelTests): no cuBLAS in the process, so racecheck sees only our kernels
#   unfused - the unfused baseline (cuBLAS GEMMs + our softmax kernels), apart because its S and dP matrices are written
#             by cuBLAS; its one deliberate out-of-memory case is left out (memcheck counts the refused cuMemAlloc)
# Usage (a device call carrying artifacts/carry, after scripts/publish-device.sh):
#   bash scripts/sanitize.sh [tool ...]            default: all four tools over all workloads
#   WORKLOADS="check" LIMIT_S=120 bash scripts/sanitize.sh racecheck
# Writes $OUT/sanitizer/<tool>-<workload>.log, <tool>-<workload>.kernels (the kernels that run launched, from
# FLASHATTN_KERNEL_LOG), <tool>-variants.txt (their union per tool) and summary.md (one row per run: errors reported,
# exit code, seconds, variants launched).
# A run counts as clean only when the sanitizer's summary line reports 0 errors (0 hazards for racecheck) and the
# program exited 0.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/out}/sanitizer
mkdir -p "$out"
if [ -f artifacts/carry/device.tar.xz ] && [ ! -x artifacts/device/tests/FlashAttention.Tests ]; then
  tar -C artifacts -xJf artifacts/carry/device.tar.xz
fi
[ -x artifacts/device/tests/FlashAttention.Tests ] || { echo "no published build: run scripts/publish-device.sh first"; exit 2; }
sanitizer=${SANITIZER:-/usr/local/cuda/bin/compute-sanitizer}
[ -x "$sanitizer" ] || { echo "compute-sanitizer not found at $sanitizer (set SANITIZER=...)"; exit 2; }
export FLASHATTN_CACHE_DIR="$PWD/artifacts/carry/cubin-cache"
export DOTNET_gcServer=0

tools=("$@")
[ ${#tools[@]} -gt 0 ] || tools=(memcheck racecheck synccheck initcheck)
read -r -a workloads <<< "${WORKLOADS:-check tests variants unfused-rows unfused}"
limit=${LIMIT_S:-240}
classes=(CudaForwardTests CudaBackwardTests CudaVarlenTests CudaDropoutTests CudaScoreModifierTests CudaProbabilitiesTests
         CudaKvCacheTests CudaKvCacheAttentionTests CudaHostileInputTests CudaConcurrencyTests)
class_args=()
for c in "${classes[@]}"; do class_args+=(-class "FlashAttn.Tests.Cuda.$c"); done

workload_command() {
  case "$1" in
    check) echo artifacts/device/cli/flash-attn check --path cuda --seed 20261125 ;;
    tests) echo artifacts/device/tests/FlashAttention.Tests -noColor "${class_args[@]}" ;;
    race) echo artifacts/device/tests/FlashAttention.Tests -noColor \
            -method "FlashAttn.Tests.Cuda.CudaVarlenTests.DeterministicVarlenBackwardIsBitwiseRepeatable" \
            -method "FlashAttn.Tests.Cuda.CudaVarlenTests.PackedQkvViewsEqualSeparateTensors" \
            -method "FlashAttn.Tests.Cuda.CudaProbabilitiesTests.ProbabilitiesMatchTheCpuPathAndTheReference" \
            -method "FlashAttn.Tests.Cuda.CudaProbabilitiesTests.DropoutSignsEqualTheCpuPathAndTheMaskBitForBit" \
            -method "FlashAttn.Tests.Cuda.CudaBackwardTests.DeterministicModeGivesBitwiseIdenticalGradients" \
            -method "FlashAttn.Tests.Cuda.CudaBackwardTests.WideHeadDimsHandleWindowsDropoutAndDeterminism" \
            -method "FlashAttn.Tests.Cuda.CudaKvCacheTests.MatchesReference" ;;
    variants) echo artifacts/device/tests/FlashAttention.Tests -noColor -class FlashAttn.Tests.Cuda.CudaEveryVariantTests ;;
    hopper) echo artifacts/device/tests/FlashAttention.Tests -noColor \
              -method FlashAttn.Tests.Cuda.CudaEveryVariantTests.HopperForwardMatchesTheReference ;;
    unfused-rows) echo artifacts/device/tests/FlashAttention.Tests -noColor -class FlashAttn.Tests.Cuda.UnfusedSoftmaxKernelTests ;;
    unfused) echo artifacts/device/tests/FlashAttention.Tests -noColor -class FlashAttn.Tests.Cuda.UnfusedAttentionTests \
               -method- FlashAttn.Tests.Cuda.UnfusedAttentionTests.ScoreMatrixThatDoesNotFitThrowsOutOfMemory ;;
    *) echo "unknown workload $1" >&2; return 1 ;;
  esac
}

summary="$out/summary.md"
{
  echo "# compute-sanitizer run"
  echo
  echo "$(date -u +%Y-%m-%dT%H:%M:%SZ), $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader), $("$sanitizer" --version | tail -1)"
  echo
  echo "| tool | workload | errors reported | exit code | seconds | variants launched | verdict |"
  echo "|---|---|---:|---:|---:|---:|---|"
} > "$summary"
status=0
for tool in "${tools[@]}"; do
  extra=()
  # racecheck reports shared-memory hazards; "all" also lists the warnings the default analysis folds away.
  [ "$tool" = racecheck ] && extra=(--racecheck-report all)
  for w in "${workloads[@]}"; do
    log="$out/$tool-$w.log"
    kernels="$out/$tool-$w.kernels"
    rm -f "$kernels"
    start=$SECONDS
    # initcheck does not see cuBLAS's stores into the unfused baseline's score and dP buffers: zero them first (memsets
    # it does track) so that run reports only reads of memory nothing wrote (Cuda/Unfused/SanitizerScoreFill.cs).
    zero_scores=0
    [ "$tool" = initcheck ] && [ "$w" = unfused ] && zero_scores=1
    # shellcheck disable=SC2046
    FLASHATTN_UNFUSED_ZERO_SCORES=$zero_scores FLASHATTN_KERNEL_LOG="$kernels" timeout --signal=INT --kill-after=20 "$limit" "$sanitizer" --tool "$tool" "${extra[@]}" --print-limit 50 \
      --target-processes all $(workload_command "$w") > "$log" 2>&1
    rc=$?
    secs=$((SECONDS - start))
    # memcheck, synccheck, initcheck end with "ERROR SUMMARY: N errors"; racecheck with
    # "RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)": every displayed hazard counts.
    errors=$(grep -oE "(ERROR SUMMARY: [0-9]+ error|RACECHECK SUMMARY: [0-9]+ hazard)" "$log" | tail -1 | grep -oE "[0-9]+")
    if [ $rc -eq 124 ] || [ $rc -eq 130 ] || [ $rc -eq 137 ]; then verdict="timed out after ${limit}s (incomplete)"; status=1
    elif [ -z "$errors" ]; then verdict="no summary printed"; status=1
    elif [ "$errors" = 0 ] && [ $rc -eq 0 ]; then verdict=clean
    else verdict=REPORTS; status=1; fi
    variants=$( [ -f "$kernels" ] && sort -u "$kernels" | awk '{print $1}' | sort -u | wc -l || echo 0)
    echo "| $tool | $w | ${errors:--} | $rc | $secs | $variants | $verdict |" >> "$summary"
    echo "$tool/$w: ${errors:-?} errors, exit $rc, ${secs}s, $verdict"
    grep -E "^========= (Invalid|Race|Barrier|Uninitialized|Error|Program hit|Warning)" "$log" | sort | uniq -c | sort -rn | head -8
  done
  cat "$out/$tool"-*.kernels 2>/dev/null | awk '{print $1}' | sort -u > "$out/$tool-variants.txt"
done
{
  echo
  echo "Distinct kernel variants launched under each tool (all its workloads together):"
  echo
  for tool in "${tools[@]}"; do echo "- $tool: $(wc -l < "$out/$tool-variants.txt")"; done
} >> "$summary"
cat "$summary"
exit $status
