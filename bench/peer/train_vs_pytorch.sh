#!/usr/bin/env bash
# Training speed against PyTorch measured in the same session: for each of the
# training issue's shapes, `tessera bench --train` and bench/peer/pytorch_train.py
# alternate ROUNDS times (A B A B ...) and the best step of each is compared, so a
# shared machine's busy spells affect both sides alike.
#
#   bash bench/peer/train_vs_pytorch.sh [BUILD_DIR] [ROUNDS] [SHAPES...]
#   SHAPES: 15m:fp32 15m:bf16 gpt2-124m:fp32 gpt2-124m:bf16 260k:fp32 (default: all but gpt2-124m:bf16)
#   LORA=16: LoRA steps instead (rank 16 adapters on every linear layer, base frozen, on both sides)
#
# Needs Debian's python3-torch (apt-get install python3-torch); not part of CI.
#
# The peer is tuned by default (PEER_TUNED=1), because Debian's PyTorch 1.13 is
# badly handicapped on a stock install: glibc malloc hands large tensors back to
# the OS so every step re-faults them (fill_/log_softmax dominate a profile), and
# OpenBLAS 0.3.21 does not know Zen 5 and falls back to its AVX2 "Haswell"
# kernels. Tuned means LD_PRELOAD of tcmalloc (apt-get install
# libtcmalloc-minimal4) when it is installed and OPENBLAS_CORETYPE=SkylakeX when
# the CPU has AVX-512F. PEER_TUNED=0 measures the stock install. The peer
# configuration used is printed first.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
build=${1:-build}
rounds=${2:-2}
shift $(( $# > 2 ? 2 : $# ))
shapes=("$@")
[ ${#shapes[@]} -gt 0 ] || shapes=(15m:fp32 15m:bf16 gpt2-124m:fp32 260k:fp32)
tessera="$build/bin/tessera"
[ -x "$tessera" ] || { echo "error: $tessera not found (build first, or give the build directory)" >&2; exit 1; }
py=/usr/bin/python3
"$py" -c "import torch" 2>/dev/null || { echo "error: $py cannot import torch (apt-get install python3-torch)" >&2; exit 1; }
threads=${THREADS:-2}

peer_env=()
if [ "${PEER_TUNED:-1}" = 1 ]; then
  tcm=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
  if [ -e "$tcm" ]; then peer_env+=("LD_PRELOAD=$tcm")
  else echo "note: $tcm not installed (apt-get install libtcmalloc-minimal4); peer uses glibc malloc" >&2; fi
  grep -qw avx512f /proc/cpuinfo && peer_env+=("OPENBLAS_CORETYPE=SkylakeX")
fi
echo "peer: PyTorch $("$py" -c 'import torch; print(torch.__version__)') env: ${peer_env[*]:-(stock)}"

batch_of() { case "$1" in 15m) echo 8 ;; gpt2-124m) echo 4 ;; 260k) echo 32 ;; *) echo "error: unknown shape $1" >&2; exit 1 ;; esac; }
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a > b ? a : b) }'; }

# tessera/peak: 6 N T FLOP/s over the same-run GEMM peak; the /ceiling columns are
# each side's 6 N T rate over the register-only multiply-add ceiling (the physical limit).
printf '%-16s %12s %12s %8s %14s %16s %16s\n' "shape" "tessera" "pytorch" "ratio" "tessera/peak" "tessera/ceiling" \
  "pytorch/ceiling"
for sp in "${shapes[@]}"; do
  shape=${sp%%:*} prec=${sp##*:}
  batch=$(batch_of "$shape")
  steps=3; [ "$shape" = gpt2-124m ] && steps=2
  best_t=0 best_p=0 frac=0 cfrac=
  for _ in $(seq "$rounds"); do
    j=$("$tessera" bench --train --synthetic "$shape" --precision "$prec" --batch "$batch" --seq 256 \
         --steps "$steps" -t "$threads" --lora-rank "${LORA:-0}" --json 2>/dev/null)
    t=$(field train_tok_s <<<"$j")
    if awk -v a="$t" -v b="$best_t" 'BEGIN { exit !(a > b) }'; then
      best_t=$t frac=$(field peak_fraction <<<"$j") cfrac=$(field fma_peak_fraction <<<"$j")
    fi
    p=$(env "${peer_env[@]}" "$py" "$here/pytorch_train.py" --shape "$shape" --precision "$prec" --batch "$batch" --seq 256 \
         --steps "$steps" --threads "$threads" --lora-rank "${LORA:-0}" --json | field train_tok_s)
    best_p=$(max "$p" "$best_p")
  done
  ratio=$(awk -v a="$best_t" -v b="$best_p" 'BEGIN { printf "%.2f", a / b }')
  pfrac=n/a
  [ -n "$cfrac" ] && pfrac=$(awk -v c="$cfrac" -v a="$best_t" -v b="$best_p" 'BEGIN { printf "%.4f", c * b / a }')
  printf '%-16s %12s %12s %8s %14s %16s %16s\n' "$sp" "$best_t" "$best_p" "${ratio}x" "$frac" "${cfrac:-n/a}" "$pfrac"
done
