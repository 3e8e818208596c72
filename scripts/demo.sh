#!/usr/bin/env bash
# Installs dependencies, builds (Release) and runs the main job on a built-in
# default: a synthetic 15M-parameter Llama (random weights, no download),
# benchmarked against this machine's measured memory bandwidth and GEMM peak.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
./build/bin/tessera bench --synthetic 15m -p 256 -n 128
