#!/usr/bin/env bash
# bench/dist/pipeline.sh [BUILD_DIR] [MODEL_CONFIG]   (defaults: build/release, configs/bench-v3-1b.json)
#   env: LAYERS=4 SEQ=4096 BATCH=1 REPS=5 THREADS=1 PRECISION=bf16  PP=16  MS="32 40 120"
#        RUNS=3 measurements (F, B, W each the median over them); QUIET_WAIT=S: before each,
#        wait up to S s for idle cores (bench/dist/quiet.sh).
#        FBW="F B W" skips the measurement and simulates those costs.
#
# The pipeline bubble of DeepSeek-V3's layout (docs/PERF.md, "Distributed training"): measures
# one stage's F, B, W per micro-batch with `dsv3 bench stage` (LAYERS MoE layers — 61 layers on
# 16 stages is ~4 each — one micro-batch of BATCH x SEQ tokens; W from the FLOP split, see
# bench/bench_stage.cpp), then runs `dsv3 pipeline-sim` with them for 1F1B, ZB1P, DualPipe
# (PP ranks = PP stages) and DualPipeV (PP ranks, 2·PP stages of half the layers: F/2, B/2, W/2)
# for each micro-batch count in MS, and prints the bubble fraction: the idlest rank's idle
# time / makespan (pipeline-sim's bubble, the README's measure; with F&B = F + B every rank
# has the same work, so all ranks idle alike), beside the README formula's bubble.
# F&B (an overlapped forward-backward pair) is F + B: the simulation has compute only.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/release}
config=${2:-configs/bench-v3-1b.json}
dsv3=$build/dsv3
pp=${PP:-16}
ms=${MS:-"32 40 120"}
[[ -x $dsv3 ]] || { echo "build dsv3 first: cmake -S . -B $build -DCMAKE_BUILD_TYPE=Release && cmake --build $build --target dsv3" >&2; exit 1; }

if [[ -n ${FBW:-} ]]; then
  read -r F B W <<<"$FBW"
  echo "== given costs: F=$F B=$B W=$W"
else
  echo "== $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores, AMX: $(grep -qw amx_tile /proc/cpuinfo && echo yes || echo no); load $(cut -d' ' -f1-3 /proc/loadavg)"
  cmd=("$dsv3" bench stage --config "$config" --layers "${LAYERS:-4}" --batch "${BATCH:-1}" --seq "${SEQ:-4096}"
       --reps "${REPS:-5}" --threads "${THREADS:-1}" --precision "${PRECISION:-bf16}")
  echo "== ${cmd[*]}"
  source bench/dist/quiet.sh
  tmp=$(mktemp -d /tmp/dsv3-stage.XXXXXX)
  trap 'rm -rf "$tmp"' EXIT
  for ((r = 1; r <= ${RUNS:-3}; ++r)); do
    ((${QUIET_WAIT:-0} > 0)) && wait_quiet "$QUIET_WAIT"
    OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive} timed_stat "$tmp/$r.stat" "${cmd[@]}" --json >"$tmp/$r.json"
    echo "run $r (other processes: $(others "$tmp/$r.stat") cores): $(cat "$tmp/$r.json")"
  done
  read -r F B W <<<"$(python3 -c '
import json, statistics, sys
js = [json.load(open(f)) for f in sys.argv[1:]]
print(*(statistics.median(j[k] for j in js) for k in ("F", "B", "W")))' "$tmp"/*.json)"
  echo "== medians: F=$F B=$B W=$W"
fi

echo
echo "| M | schedule | ranks | stages | F / B / W per stage (s) | makespan (s) | bubble (s) | README formula (s) | bubble / makespan |"
echo "|---:|---|---:|---:|---|---:|---:|---:|---:|"
for m in $ms; do
  for s in 1f1b zb1p dualpipe dualpipev; do
    f=$F b=$B w=$W stages=$pp
    if [[ $s == dualpipev ]]; then  # 2·pp stages on pp ranks: each half the layers
      read -r f b w <<<"$(python3 -c "import sys; print(*(float(x) / 2 for x in sys.argv[1:]))" "$F" "$B" "$W")"
      stages=$((2 * pp))
    fi
    "$dsv3" pipeline-sim --schedule "$s" --pp "$pp" --micro-batches "$m" --f "$f" --b "$b" --w "$w" |
      python3 -c '
import re, sys
t = sys.stdin.read()
mk = float(re.search(r"^makespan (\S+)", t, re.M).group(1))
bub, fml = map(float, re.search(r"bubble \(idle time, max over ranks\): (\S+) simulated, (\S+) by", t).groups())
m, s, ranks, stages, f, b, w = sys.argv[1:]
print(f"| {m} | {s} | {ranks} | {stages} | {float(f):.3f} / {float(b):.3f} / {float(w):.3f} | {mk:.2f} | {bub:.2f} | "
      f"{fml:.2f} | {100 * bub / mk:.1f}% |")
' "$m" "$s" "$pp" "$stages" "$f" "$b" "$w"
  done
done
