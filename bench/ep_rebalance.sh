#!/usr/bin/env bash
# Redundant experts in the server, measured (docs/PERF.md "Expert load and EPLB"): an
# expert-parallel server (`mpirun -np RANKS dsv3 serve --ep RANKS --redundant-experts R`)
# counts the routed rows each rank computes. Workload 1 (half of the prompt files) runs under
# the placement at start; POST /admin/rebalance re-places the experts by EPLB from that load;
# workload 2 (the other half: text of the same kind, not seen by the plan) runs under the new
# placement. Reported per phase, from GET /v1/expert_load: the busiest rank's rows over the
# mean rank's, mean over MoE layers and worst layer; and for workload 2 the same figure the
# contiguous layout (expert e on rank e·RANKS/E, no copies) would have given — exact, since a
# single-copy layout leaves no choice.
# Usage: bench/ep_rebalance.sh MODEL_DIR [R] [RANKS] [FILES_GLOB]
set -euo pipefail
MODEL=${1:?usage: bench/ep_rebalance.sh MODEL_DIR [R] [RANKS] [FILES_GLOB]}
R=${2:-0}
RANKS=${3:-4}
HERE=$(cd "$(dirname "$0")" && pwd)
GLOB=${4:-$HERE/../src/*/*.cpp}
BIN=${DSV3_BIN:-$HERE/../build/release/dsv3}
OUT=$(mktemp -d /tmp/dsv3-ep-rebalance.XXXXXX)
mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 --mca btl self,vader -np "$RANKS" \
  "$BIN" serve --model "$MODEL" --port 0 --ep "$RANKS" --redundant-experts "$R" --threads 1 \
  --no-prefix-cache --no-request-log --speculative off >"$OUT/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
URL=
for _ in $(seq 600); do
  URL=$(grep -o 'ready on http://[^ ]*' "$OUT/serve.log" | head -1 | cut -d' ' -f3 || true)
  [[ -n "$URL" ]] && break
  sleep 0.2
done
[[ -n "$URL" ]] || { cat "$OUT/serve.log"; exit 1; }
# shellcheck disable=SC2086
python3 - "$URL" "$RANKS" $GLOB <<'PY'
import json, sys, urllib.request
url, P, files = sys.argv[1], int(sys.argv[2]), sorted(sys.argv[3:])

def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data, {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=600))

def run(fs):
    for f in fs:
        call("/v1/completions", {"prompt": open(f, errors="replace").read()[:1500], "max_tokens": 16, "temperature": 0})

def imbalance(rows):  # [layers][P] -> (mean over layers, worst layer) of max / mean
    r = [max(x) * len(x) / sum(x) for x in rows if sum(x) > 0]
    return sum(r) / len(r), max(r)

def contiguous(weight):  # [layers][E] -> rows per rank with expert e on rank e*P/E
    out = []
    for w in weight:
        E = len(w)
        out.append([sum(w[e] for e in range(E) if e * P // E == r) for r in range(P)])
    return out

w1, w2 = files[0::2], files[1::2]
run(w1)
a = call("/v1/expert_load")
m1 = imbalance(a["rank_load"])
rb = call("/admin/rebalance", {})
run(w2)
b = call("/v1/expert_load")
m2 = imbalance(b["rank_load"])
load2 = [[y - x for x, y in zip(la, lb)] for la, lb in zip(a["weight"], b["weight"])]
c2 = imbalance(contiguous(load2))
slots = b["placement"]["slots"]
print(f"{P} ranks, {slots} slots per MoE layer ({slots - len(load2[0])} copies), {len(load2)} MoE layers; "
      f"workload 1: {len(w1)} prompts, workload 2: {len(w2)} prompts (1500 bytes + 16 tokens each)")
print(f"busiest rank / mean rank, mean over layers (worst layer):")
print(f"  workload 1, placement at start ({a['placement']['source'] or 'contiguous'}), measured: {m1[0]:.3f} ({m1[1]:.3f})")
print(f"  rebalance from workload 1's load ({rb['assignments']:.0f} rows): expected on that load {rb['expected_imbalance_before']:.3f} -> {rb['expected_imbalance_after']:.3f}")
print(f"  workload 2, contiguous layout (exact counterfactual): {c2[0]:.3f} ({c2[1]:.3f})")
print(f"  workload 2, rebalanced placement, measured:           {m2[0]:.3f} ({m2[1]:.3f})")
PY
kill -TERM "$(grep -o 'rank 0 pid [0-9]*' "$OUT/serve.log" | head -1 | cut -d' ' -f4)" 2>/dev/null || kill $PID
wait $PID || true
trap - EXIT
grep "expert placement" "$OUT/serve.log" || true
