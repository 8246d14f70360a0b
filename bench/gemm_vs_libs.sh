#!/bin/bash
# Our GEMMs against the libraries on this machine, back to back per shape:
#   F32: ours vs OpenBLAS sgemm (bench_openblas, own process);
#   BF16: ours vs PyTorch bf16 matmul (oneDNN, bench/compare_torch.py);
#   FP8: ours (block-scaled, DeepSeek-V3 layouts) vs our BF16.
# Prints a markdown table of GFLOP/s (median of a ~1 s run each; `best` with --best) and
# ratios. usage: bench/gemm_vs_libs.sh [build_dir=build/release] [threads=2] [form=fprop]
# Env: SECONDS_PER=1 (time per measurement), SHAPES="MxNxK ..." to override the list,
#      BEST=1 to report the best run instead of the median (this machine is shared/noisy),
#      CPU=1 to report FLOPs per process CPU-second (use with threads=1: per-core speed,
#      nearly immune to other processes; with more threads it also counts spin-waiting).
set -euo pipefail
# OpenMP wait policy: on an idle machine every side runs with its default (spinning)
# waits, which is what each is fastest with (PyTorch's bf16 matmul measured the same or
# better than with PASSIVE, which SPEC §8 advises for its f32 work only). On a shared,
# oversubscribed machine set POLICY=PASSIVE to run every side passive: there an
# OpenMP thread spinning at a join holds a core its partner needs (20 ms stalls measured).
[[ "${POLICY:-}" == PASSIVE ]] && export OMP_WAIT_POLICY=PASSIVE
BUILD=${1:-build/release}
THREADS=${2:-2}
FORM=${3:-fprop}
SECS=${SECONDS_PER:-1}
FIELD=gflops
[[ "${BEST:-0}" == 1 ]] && FIELD=gflops_best
[[ "${CPU:-0}" == 1 ]] && FIELD=gflops_cpu
HERE=$(cd "$(dirname "$0")" && pwd)
DSV3=$BUILD/dsv3
OBLAS=$BUILD/bench_openblas
# 2048^3; DeepSeek-V3-like projection 512x7168x2048 and its decode row; MoE experts of
# Moonlight-16B / DeepSeek-V2-Lite (hidden 2048, moe_intermediate 1408, 64 tokens);
# a tiny model (hidden 256, experts 128..512).
SHAPES=${SHAPES:-"2048x2048x2048 512x7168x2048 1x7168x2048 64x1408x2048 64x2048x1408 512x1408x2048 256x256x256 64x512x256 64x256x512 64x128x256"}

get() {  # get FIELD from a JSON line on stdin
  python3 -c "import sys, json; print(json.loads(sys.stdin.readline())['$1'])"
}
ratio() { python3 -c "print(f'{$1/$2:.2f}' if $2 > 0 else '-')"; }

echo "threads=$THREADS form=$FORM field=$FIELD ($(date -u +%FT%TZ), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo
echo "| M x N x K | ours f32 | OpenBLAS f32 | f32 ratio | ours bf16 | torch bf16 | bf16 ratio | ours fp8 | fp8/bf16 |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for s in $SHAPES; do
  IFS=x read -r M N K <<< "$s"
  ours() { "$DSV3" bench gemm --m "$M" --n "$N" --k "$K" --dtype "$1" --form "$FORM" --threads "$THREADS" --seconds "$SECS" --json | get $FIELD; }
  f32=$(ours f32)
  ob=$("$OBLAS" "$M" "$N" "$K" "$THREADS" "$FORM" | get $FIELD)
  bf=$(ours bf16)
  tb=$(ATEN_CPU_CAPABILITY=avx512 /usr/bin/python3 "$HERE/compare_torch.py" --dtype bf16 --form "$FORM" --threads "$THREADS" --seconds "$SECS" "$s" | get $FIELD)
  f8=$(ours fp8)
  echo "| $s | $f32 | $ob | $(ratio "$f32" "$ob") | $bf | $tb | $(ratio "$bf" "$tb") | $f8 | $(ratio "$f8" "$bf") |"
done
