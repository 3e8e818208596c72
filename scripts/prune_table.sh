#!/usr/bin/env bash
# The pruning table of docs/finetuning.md: stories260K pruned several ways, its TinyStories
# perplexity before and after a short recovery run (--keep-sparsity for the sparse ones),
# the file size and decode tok/s.   bash scripts/prune_table.sh [BUILD_DIR] [RECOVERY_STEPS]
set -euo pipefail
build=${1:-build}
steps=${2:-200}
T="$build/bin/tessera"
shared=${SHARED:-../shared}
tok="$shared/models/tok512.bin" base="$shared/models/stories260K.bin"
out=$(mktemp -d /tmp/prune_table.XXXXXX)
head -c 700000 "$shared/data/tinystories_val.txt" > "$out/train.txt"
tail -c 90000 "$shared/data/tinystories_val.txt" > "$out/eval.txt"
"$T" data prepare --tokenizer "$tok" -o "$out/data" "$out/train.txt" 2>/dev/null
nll() { "$T" perplexity -m "$1" -f "$out/eval.txt" -c 256 2>/dev/null | sed -n 's/.*perplexity \([0-9.]*\),.*/\1/p'; }
tps() { "$T" bench -m "$1" -p 0 -n 256 --json 2>/dev/null | sed -n 's/.*"decode_tok_s": \([0-9.]*\).*/\1/p'; }
printf '%-34s %9s %9s %9s %10s %11s\n' pruning params ppl ppl_rec file_KB decode_tok_s
"$T" convert "$base" "$out/base.gguf" --tokenizer "$tok" 2>/dev/null
printf '%-34s %9s %9s %9s %10s %11s\n' "none (f32)" 0.260M "$(nll "$out/base.gguf")" - \
  "$(( $(stat -c %s "$out/base.gguf") / 1024 ))" "$(tps "$out/base.gguf")"
while IFS='|' read -r name args keep; do
  "$T" prune "$base" --tokenizer "$tok" -o "$out/p.gguf" $args --data "$out/data" 2>"$out/prune.log"
  params=$(sed -n 's/.*-> \([0-9.]*M\) params.*/\1/p' "$out/prune.log")
  rm -rf "$out/rec"
  "$T" train --init "$out/p.gguf" --data "$out/data" -o "$out/rec" --steps "$steps" --batch 16 --seq 128 --lr 5e-4 \
    --warmup 10 --eval-interval "$steps" --log-interval 100000 $keep 2>/dev/null
  "$T" export "$out/rec" -o "$out/r.gguf" 2>/dev/null
  printf '%-34s %9s %9s %9s %10s %11s\n' "$name" "$params" "$(nll "$out/p.gguf")" "$(nll "$out/r.gguf")" \
    "$(( $(stat -c %s "$out/p.gguf") / 1024 ))" "$(tps "$out/r.gguf")"
done <<'ROWS'
50% unstructured, magnitude|--sparsity 0.5|--keep-sparsity
50% unstructured, per matrix|--sparsity 0.5 --per-layer|--keep-sparsity
50% unstructured, Taylor|--sparsity 0.5 --score taylor|--keep-sparsity
2:4, magnitude|--two-four|--keep-sparsity
KV heads 4 -> 2, Taylor|--kv-heads 2 --score taylor|
FFN 172 -> 112, Taylor|--hidden 112 --score taylor|
layers 5 -> 4, magnitude|--layers 4|
layers 5 -> 4, Taylor|--layers 4 --score taylor|
heads 2 + FFN 112 + 4 layers, Taylor|--kv-heads 2 --hidden 112 --layers 4 --score taylor|
ROWS
