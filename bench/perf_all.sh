#!/usr/bin/env bash
# Every figure of docs/PERF.md in one run, each beside its alternative measured in the
# same run. Run it on an idle machine (it prints the load average first).
# usage: bench/perf_all.sh [build_dir=build/release] [out_dir=perf-out]
set -uo pipefail
BUILD=${1:-build/release}
OUT=${2:-perf-out}
mkdir -p "$OUT"
DSV3=$BUILD/dsv3
echo "dsv3 perf run $(date -u +%FT%TZ): $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "$($DSV3 --version)"
echo
echo "== memory bandwidth (streaming read, AVX-512) and decode GEMV, 2 threads"
for policy in default passive; do
  env_policy=()
  [[ $policy == passive ]] && env_policy=(env OMP_WAIT_POLICY=passive)
  for dt in fp8 bf16; do
    k=18432; [[ $dt == bf16 ]] && k=9216
    echo "-- OMP_WAIT_POLICY=$policy gemv $dt 7168x$k"
    "${env_policy[@]}" "$DSV3" bench gemv --n 7168 --k $k --dtype $dt --threads 2 --json | tee -a "$OUT/gemv.jsonl"
  done
done
for t in 1 2; do
  for dt in bf16 fp8; do
    echo "-- short-row gemv $dt, $t threads, M = 1..4"
    bench/gemv_shapes.sh $t $dt | tee -a "$OUT/gemv_shapes.txt"
  done
done
echo
echo "== OpenMP wait policy: our GEMM 2048^3 f32 and bf16, default vs passive"
for dt in f32 bf16; do
  "$DSV3" bench gemm --m 2048 --n 2048 --k 2048 --dtype $dt --threads 2 --json | tee -a "$OUT/policy.jsonl"
  OMP_WAIT_POLICY=passive "$DSV3" bench gemm --m 2048 --n 2048 --k 2048 --dtype $dt --threads 2 --json | tee -a "$OUT/policy.jsonl"
done
echo
echo "== GEMM, 2 threads, fprop (median; all sides OMP_WAIT_POLICY=PASSIVE)"
bench/gemm_vs_libs.sh "$BUILD" 2 fprop | tee "$OUT/gemm_2t_fprop.md"
echo
echo "== GEMM, 1 thread, per CPU-second, dgrad and wgrad"
CPU=1 SHAPES="2048x2048x2048 512x7168x2048 64x1408x2048" bench/gemm_vs_libs.sh "$BUILD" 1 dgrad | tee "$OUT/gemm_1t_dgrad.md"
CPU=1 SHAPES="2048x2048x2048 7168x2048x512 1408x2048x64" bench/gemm_vs_libs.sh "$BUILD" 1 wgrad | tee "$OUT/gemm_1t_wgrad.md"
echo
echo "== row kernels, 1 thread: dsv3 vs PyTorch"
"$DSV3" bench ops --tokens 64 --threads 1 --seconds 0.3 | tee "$OUT/ops.txt"
OMP_WAIT_POLICY=PASSIVE ATEN_CPU_CAPABILITY=avx512 /usr/bin/python3 bench/ext/torch_ops.py --tokens 64 --threads 1 --seconds 0.3 | tee -a "$OUT/ops.txt"
echo
echo "== tokenizer encode, 1 thread: dsv3 vs Rust HF tokenizers (npm binding)"
tools/tokenizer/bench.sh "$DSV3" | tee "$OUT/tokenizer.txt"
echo
if "$DSV3" bench load --help >/dev/null 2>&1; then
  echo "== checkpoint open (mmap) vs full read, 2 GB generated checkpoint"
  "$DSV3" bench load --size-gb 2 | tee "$OUT/load.txt"
fi
if [[ -f runs/mtp-bench/step-000300/config.json ]]; then
  echo "== MTP speculative vs plain decoding (runs/mtp-bench: bench/mtp_speculative.sh trains it, ~35 min)"
  "$DSV3" bench speculative --model runs/mtp-bench/step-000300 --tokens 128 --draft 1,2 --reps 3 | tee "$OUT/speculative.txt"
fi
echo
echo "== decode per latent-cache form, configs/bench-v3-1b.json (random FP8 weights), 2 threads"
[[ -f $OUT/b1b/config.json ]] || "$DSV3" init --config configs/bench-v3-1b.json --format fp8 --out "$OUT/b1b" --no-mtp
"$DSV3" bench decode --model "$OUT/b1b" --context 256,4096,8192,32704 --kv-cache f32,bf16,fp8 --steps 20 --profile \
  2>&1 | tee "$OUT/decode_kv.txt"
"$DSV3" bench latent --s 8192 | tee -a "$OUT/decode_kv.txt"
echo
echo "== distributed training (MPI): expert-parallel overlap under injected delay, pipeline bubble"
if command -v mpirun >/dev/null; then
  QUIET_WAIT=60 bench/dist/overlap.sh "$BUILD" "$OUT/overlap" | tee "$OUT/overlap.txt"
  QUIET_WAIT=60 bench/dist/pipeline.sh "$BUILD" | tee "$OUT/pipeline.txt"
else
  echo "(mpirun not found: apt-get install -y openmpi-bin libopenmpi-dev)"
fi
