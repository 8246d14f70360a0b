#!/usr/bin/env bash
# The main job, as far as dsv3 goes today: build, then measure the kernels side by side
# with the libraries a user would otherwise call (docs/PERF.md has the recorded figures).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
bin=build/release
"$bin"/dsv3 --version
echo "== F32 GEMM 2048^3: dsv3 vs OpenBLAS (2 threads)"
"$bin"/dsv3 bench gemm --m 2048 --n 2048 --k 2048 --dtype f32 --threads 2
OPENBLAS_NUM_THREADS=2 "$bin"/bench_openblas 2048 2048 2048 2
echo "== BF16 GEMM 2048^3"
"$bin"/dsv3 bench gemm --m 2048 --n 2048 --k 2048 --dtype bf16 --threads 2
