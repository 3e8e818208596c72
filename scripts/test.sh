#!/usr/bin/env bash
# Installs dependencies, builds (Release), runs a short fuzz pass, then the whole test suite via CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build build -j "$(nproc)"
# A short coverage-guided fuzz run of the file parsers and the tokenizer (clang, libFuzzer).
bash scripts/fuzz.sh "${TESSERA_FUZZ_SECONDS:-20}"
# From npm, for tests that skip without them: the reference Jinja implementation the chat-template
# tests compare against, and the official OpenAI client the server tests drive.
if command -v npm >/dev/null && { [ ! -f build/npm/node_modules/@huggingface/jinja/package.json ] ||
                                  [ ! -f build/npm/node_modules/openai/package.json ]; }; then
  npm install --prefix build/npm --no-audit --no-fund --silent @huggingface/jinja@0.5.13 openai@4.104.0 ||
    echo "test.sh: warning: npm could not install @huggingface/jinja / openai; their tests will skip" >&2
fi
ctest --test-dir build --output-on-failure -j "$(nproc)"
