#!/usr/bin/env bash
# dsv3's training step against the same model and step in PyTorch (bench/train_torch.py), in one
# run: alternates `dsv3 bench train` and train_torch.py REPS times per precision (so both see the
# same machine load), then prints the medians of tokens/s and the ratio dsv3/torch.
#   bench/train_vs_torch.sh [CONFIG] [STEPS] [PRECISIONS] [OUT.jsonl]
# defaults: configs/tiny.json, 5 timed steps, "bf16 f32", build/train_vs_torch.jsonl.
# Env: DSV3 (the binary, default build/release/dsv3), REPS (3), THREADS (2),
#      DSV3_ENV (extra env for dsv3 only), TORCH_WAIT (OMP_WAIT_POLICY for PyTorch only; default
#      PASSIVE: PyTorch was no faster spinning, and its spinning threads slow whatever else runs).
#      dsv3 runs with OMP_WAIT_POLICY unset: its own thread pool spins briefly and backs off by
#      itself when the process is being preempted (docs/PERF.md "Threads"); PASSIVE would make it
#      sleep at once, its slowest setting.
set -euo pipefail
TORCH_WAIT=${TORCH_WAIT:-PASSIVE}
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/tiny.json}
STEPS=${2:-5}
PRECS=${3:-"bf16 f32"}
OUT=${4:-build/train_vs_torch.jsonl}
DSV3=${DSV3:-build/release/dsv3}
REPS=${REPS:-3}
THREADS=${THREADS:-2}
[[ -x $DSV3 ]] || { echo "train_vs_torch.sh: $DSV3 not built (cmake --build build/release)" >&2; exit 1; }
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
echo "# $(date -u +%FT%TZ) $(nproc) CPUs, torch OMP_WAIT_POLICY=$TORCH_WAIT; uptime before: $(uptime)"
for p in $PRECS; do
  for r in $(seq "$REPS"); do
    env -u OMP_WAIT_POLICY ${DSV3_ENV:-} "$DSV3" bench train --config "$CONFIG" --steps "$STEPS" --precision "$p" \
        --threads "$THREADS" --json | tee -a "$OUT"
    OMP_WAIT_POLICY=$TORCH_WAIT /usr/bin/python3 bench/train_torch.py --config "$CONFIG" --steps "$STEPS" --precision "$p" \
        --threads "$THREADS" --json | tee -a "$OUT"
  done
done
echo "# uptime after: $(uptime)"
/usr/bin/python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
for p in sorted({r["precision"] for r in rows}):
    d = [r for r in rows if r["precision"] == p and r["impl"] == "dsv3"]
    t = [r for r in rows if r["precision"] == p and r["impl"] == "torch"]
    if not d or not t:
        continue
    md = statistics.median(r["tokens_per_s"] for r in d)
    mt = statistics.median(r["tokens_per_s"] for r in t)
    line = {"result": "train_vs_torch", "precision": p, "runs": [len(d), len(t)],
            "dsv3_tokens_per_s": md, "torch_tokens_per_s": mt, "ratio_dsv3_over_torch": round(md / mt, 3),
            "dsv3_cpu_s_per_step": statistics.median(r["cpu_s"] for r in d),
            "torch_cpu_s_per_step": statistics.median(r["cpu_s"] for r in t),
            "dsv3_gflops": statistics.median(r["gflops"] for r in d),
            "torch_gflops": statistics.median(r["gflops"] for r in t),
            "dsv3_mfu": statistics.median(r["mfu"] for r in d), "peak_gflops": statistics.median(r["peak_gflops"] for r in d),
            "params": [d[0]["params"], t[0]["params"]], "same_params": d[0]["params"] == t[0]["params"]}
    line["ratio_by_cpu_time"] = round(line["torch_cpu_s_per_step"] / line["dsv3_cpu_s_per_step"], 3)
    print(json.dumps(line))
    with open(sys.argv[1], "a") as f:
        f.write(json.dumps(line) + "\n")
PY
