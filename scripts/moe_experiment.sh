#!/usr/bin/env bash
# Dense vs mixture-of-experts at equal wall time on TinyStories (docs/moe.md):
# a dense Llama and an MoE one with 8 experts, top-2, of half the dense FFN width
# (the same active FLOPs per token) train for the same number of seconds on
# ../shared/data/tinystories_val.txt with the stories260K tokenizer, and a third
# run routes the same experts by hash-balanced token ids (no router); then one
# plot of the validation curves against wall time.
#   bash scripts/moe_experiment.sh [SECONDS_PER_RUN] [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-180}
OUT=${2:-build/moe_experiment}
SHARED=${TESSERA_SHARED:-../shared}
BIN=build/bin/tessera
[ -x "$BIN" ] || { echo "build first (bash scripts/test.sh or cmake --build build)" >&2; exit 1; }
mkdir -p "$OUT"
[ -f "$OUT/data/meta.json" ] ||
  "$BIN" data prepare --tokenizer "$SHARED/models/tok512.bin" -o "$OUT/data" "$SHARED/data/tinystories_val.txt"
COMMON=(--data "$OUT/data" --dim 128 --layers 4 --heads 4 --batch 16 --seq 128 --steps 100000 --lr 2e-3
        --schedule constant --warmup 50 --eval-interval 50 --eval-batches 8 --log-interval 200 --seed 1
        --max-time "$SECS")
rm -rf "$OUT/dense" "$OUT/moe" "$OUT/hash"
"$BIN" train "${COMMON[@]}" --hidden 384 -o "$OUT/dense"
"$BIN" train "${COMMON[@]}" --hidden 384 --moe-experts 8 --moe-top-k 2 --moe-expert-hidden 192 \
  --moe-balance 0.01 --moe-router-z 0.001 -o "$OUT/moe"
"$BIN" train "${COMMON[@]}" --hidden 384 --moe-experts 8 --moe-top-k 2 --moe-expert-hidden 192 \
  --moe-routing hash-balanced -o "$OUT/hash"
"$BIN" plot "dense=$OUT/dense" "moe 8x top-2=$OUT/moe" "hash-balanced 8x top-2=$OUT/hash" --x time --loss val --title "TinyStories validation loss" \
  -o "$OUT/dense_vs_moe.svg"
for r in dense moe hash; do
  printf '%-6s ' "$r"; tail -n 1 "$OUT/$r/metrics.jsonl"
done
