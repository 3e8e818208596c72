#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each for
# SECONDS (default 20) over its seed corpus. A long run: scripts/fuzz.sh 3600.
# Exits non-zero if a fuzzer finds a crash (the reproducer is left in build-fuzz/).
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-20}"
cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ \
  -DTESSERA_FUZZ=ON -DTESSERA_TESTS=OFF -DTESSERA_BENCH=OFF >/dev/null
cmake --build build-fuzz -j "$(nproc)" --target fuzz_gguf fuzz_safetensors fuzz_tokenize >/dev/null
for t in gguf safetensors tokenize; do
  work="build-fuzz/corpus-$t"
  mkdir -p "$work"
  seeds=""
  [ -d "fuzz/corpus/$t" ] && seeds="fuzz/corpus/$t"
  log="build-fuzz/fuzz_$t.log"
  if (cd build-fuzz && "./bin/fuzz_$t" -max_total_time="$secs" -print_final_stats=1 \
        "corpus-$t" ${seeds:+"../$seeds"} >"fuzz_$t.log" 2>&1); then
    echo "fuzz_$t: $(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$') inputs in ${secs}s, no crash"
  else
    echo "fuzz_$t: FAILED, see $log"
    tail -40 "$log"
    exit 1
  fi
done
