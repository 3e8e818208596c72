#!/usr/bin/env bash
# Distillation against training on data alone, for the same wall time (issue 33's experiment,
# scaled to ../shared): teacher stories260K (260K params, trained on TinyStories), student a
# 2-layer dim-48 Llama (~60K params, tok512), data TinyStories (../shared/data/tinystories_val.txt).
# Both runs: constant learning rate, stopped by --max-time; the table compares validation loss.
#   bash scripts/distill_experiment.sh [BUILD_DIR] [SECONDS]
set -euo pipefail
build=${1:-build}
secs=${2:-60}
T="$build/bin/tessera"
shared=${SHARED:-../shared}
out=$(mktemp -d /tmp/distill_exp.XXXXXX)
"$T" data prepare --tokenizer "$shared/models/tok512.bin" -o "$out/data" "$shared/data/tinystories_val.txt" 2>/dev/null
S="--data $out/data --dim 48 --layers 2 --heads 4 --kv-heads 2 --batch 16 --seq 128 --steps 1000000 --schedule constant
   --warmup 20 --lr 3e-3 --eval-interval 100 --eval-batches 16 --log-interval 1000 --seed 1 --max-time $secs"
teacher="--teacher $shared/models/stories260K.bin --teacher-tokenizer $shared/models/tok512.bin"
"$T" train $S -o "$out/data_only" 2>/dev/null
"$T" distill $S $teacher --kd-alpha 1 -o "$out/kd_a1" 2>/dev/null
"$T" distill $S $teacher --kd-alpha 0.5 -o "$out/kd_a05" 2>/dev/null
"$T" distill $S $teacher --kd-alpha 1 --kd-reverse -o "$out/kd_rev" 2>/dev/null
printf '%-28s %8s %10s %10s\n' run steps val_loss val_ppl
for r in data_only kd_a1 kd_a05 kd_rev; do
  python3 - "$out/$r/metrics.jsonl" "$r" <<'PY'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
v = [r for r in rows if "val_loss" in r][-1]
print(f"{sys.argv[2]:<28} {rows[-1]['step']:>8} {v['val_loss']:>10.4f} {math.exp(v['val_loss']):>10.2f}")
PY
done
"$T" plot data="$out/data_only" kd="$out/kd_a1" kd_half="$out/kd_a05" kd_reverse="$out/kd_rev" --x time --loss val \
  -o "$out/distill.svg" 2>/dev/null && echo "plot: $out/distill.svg"
