#!/usr/bin/env bash
# A/B of two dsv3 binaries on decode, prefill and training, idle and beside a competing
# process, rounds interleaved so that both see the same machine. Made for the switch from
# OpenMP to dsv3's own thread pool (docs/PERF.md "Threads"): run the OpenMP build as A with
# its two wait policies (active: libgomp's default; passive), the pool build as B.
#
#   bench/threads_ab.sh OLD_DSV3 NEW_DSV3 DECODE_MODEL PREFILL_MODEL [ROUNDS=3]
#
# Prints one line per measurement (round, load, arm, figure) and the medians per arm.
# The competing process is one busy shell loop pinned to nothing: on a 2-core machine it
# takes about one core, as another user's job would.
set -euo pipefail
old=$1 new=$2 dmodel=$3 pmodel=$4 rounds=${5:-3}
out=$(mktemp -d)
trap 'kill $hog 2>/dev/null || true; rm -rf "$out"' EXIT
hog=
start_hog() { (while :; do :; done) & hog=$!; }
stop_hog() { kill "$hog" 2>/dev/null || true; wait "$hog" 2>/dev/null || true; hog=; }

decode() { "$@" bench decode --model "$dmodel" --context 256 --steps 30 --json 2>/dev/null |
  python3 -c 'import json,sys; print(json.loads(sys.stdin.readlines()[-1])["runs"][0]["tokens_per_s"])'; }
prefill() { "$@" bench prefill --model "$pmodel" --tokens 128 --activations bf16 --json 2>/dev/null |
  python3 -c 'import json,sys; print(json.loads(sys.stdin.readlines()[-1])["tokens_per_s"])'; }
train() { "$@" bench train --config configs/tiny.json --steps 4 --precision bf16 --json 2>/dev/null |
  python3 -c 'import json,sys; print(json.loads(sys.stdin.readlines()[-1])["tokens_per_s"])'; }

for r in $(seq 1 "$rounds"); do
  for load in idle busy; do
    [[ $load == busy ]] && start_hog
    for arm in omp-active omp-passive pool; do
      case $arm in
        omp-active) cmd=(env -u OMP_WAIT_POLICY "$old") ;;
        omp-passive) cmd=(env OMP_WAIT_POLICY=passive "$old") ;;
        pool) cmd=(env -u OMP_WAIT_POLICY "$new") ;;
      esac
      for what in decode prefill train; do
        v=$($what "${cmd[@]}" || echo nan)
        echo "$r $load $arm $what $v" | tee -a "$out/all"
      done
    done
    [[ $load == busy ]] && stop_hog
  done
done
echo "== medians (tokens/s)"
python3 - "$out/all" <<'EOF'
import sys, statistics, collections
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r, load, arm, what, v = line.split()
    if v != "nan": d[(load, what, arm)].append(float(v))
for load in ("idle", "busy"):
    for what in ("decode", "prefill", "train"):
        row = [f"{load:5s} {what:8s}"]
        for arm in ("omp-active", "omp-passive", "pool"):
            xs = d.get((load, what, arm), [])
            row.append(f"{arm} {statistics.median(xs):8.1f}" if xs else f"{arm} -")
        print("  ".join(row))
EOF
