#!/usr/bin/env bash
# Installs dependencies, builds (Release) and runs the main job on a built-in
# default, with no download: `tessera demo` trains a byte-level BPE tokenizer
# and a small Llama on the fortunes text installed from Debian, then samples
# from it and reports validation perplexity. Files go to ./tessera-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j "$(nproc)"
rm -rf tessera-demo
./build/bin/tessera demo --minutes "${TESSERA_DEMO_MINUTES:-3}" -o tessera-demo
