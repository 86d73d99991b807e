#!/usr/bin/env bash
# Publishes self-contained linux-x64 builds of the test suite and the CLI into artifacts/device/ (git-ignored)
# and packs them into artifacts/carry/device.tar.xz, which a `device` call carries to the GPU machine (it has
# no .NET). The documented call (README, "Running on the GPU machine"):
#   device run, carry ["artifacts/carry"], command: bash scripts/run-device.sh all
set -euo pipefail
cd "$(dirname "$0")/.."
out=artifacts/device
rm -rf "$out/tests" "$out/cli"
mkdir -p "$out"
common=(-c Release -r linux-x64 --self-contained true -p:PublishTrimmed=true -p:TrimMode=partial
        -p:InvariantGlobalization=true -p:DebugType=none -p:GenerateDocumentationFile=false
        -p:SuppressTrimAnalysisWarnings=true -p:TreatWarningsAsErrors=false)  # trim warnings of xunit and ScottPlot are theirs
dotnet publish tests/FlashAttention.Tests "${common[@]}" -o "$out/tests" > /dev/null
if [ -d src/FlashAttention.Cli ]; then
  dotnet publish src/FlashAttention.Cli "${common[@]}" -o "$out/cli" > /dev/null
fi
du -sh "$out"/* | sed 's/^/published /'
# Both self-contained publishes together exceed what a device call may carry (64 MiB): pack them.
mkdir -p artifacts/carry
tar -C artifacts -cf - device/tests device/cli 2>/dev/null | xz -T0 -6 > artifacts/carry/device.tar.xz
du -sh artifacts/carry/device.tar.xz | sed 's/^/packed /'
