#!/usr/bin/env bash
# Load benchmark for `tessera serve` on loopback: starts a server on the
# synthetic 1B Q4_0 shape (random weights, Llama-2 vocabulary) and runs
# build/bin/serve_load with 1, 4, 16 and 64 concurrent streaming clients.
#   bash bench/serve_load.sh [BUILD_DIR] [extra serve options...]
set -euo pipefail
BUILD=${1:-build}
shift || true
ROOT=$(cd "$(dirname "$0")/.." && pwd)
TOK=${TOK:-$ROOT/../shared/models/tokenizer.bin}
MODEL=${MODEL:-synthetic:1b:q4_0}
MAXTOK=${MAXTOK:-64}
LOG=$(mktemp)
"$BUILD/bin/tessera" serve -m "$MODEL" --tokenizer "$TOK" --port 0 --parallel 64 -c 256 "$@" 2>"$LOG" &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -f "$LOG"' EXIT
for _ in $(seq 600); do grep -q "tessera: ready" "$LOG" && break; sleep 0.1; done
grep -q "tessera: ready" "$LOG" || { cat "$LOG"; echo "serve_load.sh: the server did not start" >&2; exit 1; }
PORT=$(sed -n 's|.*listening on http://[^:]*:\([0-9]*\).*|\1|p' "$LOG")
cat "$LOG"
for C in 1 4 16 64; do
  R=$(( C >= 16 ? 2 : 4 ))
  "$BUILD/bin/serve_load" --port "$PORT" --clients "$C" --requests "$R" --max-tokens "$MAXTOK"
done
