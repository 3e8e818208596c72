#!/usr/bin/env bash
# Installs dependencies, builds (Release), runs a short fuzz pass, then the whole test suite via CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
# A short coverage-guided fuzz run of the file parsers and the tokenizer (clang, libFuzzer).
bash scripts/fuzz.sh "${TESSERA_FUZZ_SECONDS:-20}"
ctest --test-dir build --output-on-failure -j "$(nproc)"
