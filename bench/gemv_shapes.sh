#!/usr/bin/env bash
# Decode GEMV on the model's short-row shapes at M = 1..4 rows of x (a plain decode step and
# the verify steps of speculative decoding): weight GB/s, membw GB/s measured in the same
# run, and their ratio (docs/PERF.md, "Decode GEMV").
#   bench/gemv_shapes.sh [THREADS] [DTYPE] [SHAPES]
# defaults: 2 threads, bf16, shapes "2048x512 512x2048 4096x512" (N x K).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${1:-2}
DTYPE=${2:-bf16}
SHAPES=${3:-"2048x512 512x2048 4096x512"}
DSV3=${DSV3:-build/release/dsv3}
[[ -x $DSV3 ]] || { echo "gemv_shapes.sh: $DSV3 not built (cmake --build build/release)" >&2; exit 1; }
echo "shape M gemv_gbps membw_gbps ratio  ($DTYPE, $THREADS threads)"
for shape in $SHAPES; do
  n=${shape%x*}
  k=${shape#*x}
  for m in 1 2 3 4; do
    "$DSV3" bench gemv --n "$n" --k "$k" --m "$m" --dtype "$DTYPE" --threads "$THREADS" \
      --seconds 1 --membw-mb 256 --json |
      python3 -c 'import json,sys; d=json.load(sys.stdin); print(sys.argv[1], sys.argv[2], d["gbps"], d["membw_gbps"], d["ratio"])' "$shape" "$m"
  done
done
