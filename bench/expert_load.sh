#!/usr/bin/env bash
# Expert load under a skewed workload, and what redundant experts would buy (docs/PERF.md
# "Expert load and EPLB"): `dsv3 serve` counts the routed experts of every forwarded row
# (--expert-load-out), a workload of one kind of text is sent, and `dsv3 eplb` places
# REPLICAS expert slots on GPUS GPUs from that load. Its summary line is the busiest GPU's
# load over the mean, worst layer, without copies (experts in index blocks, as `--ep` places
# them) and with; each copy of an expert is assumed to take an equal share of its tokens.
# Usage: bench/expert_load.sh MODEL_DIR [FILES_GLOB] [REPLICAS] [N_GROUPS] [NODES] [GPUS]
#   FILES_GLOB: the workload's prompts, one file each (default: this repo's C++ sources).
set -euo pipefail
MODEL=${1:?usage: bench/expert_load.sh MODEL_DIR [FILES_GLOB] [REPLICAS] [N_GROUPS] [NODES] [GPUS]}
HERE=$(cd "$(dirname "$0")" && pwd)
GLOB=${2:-$HERE/../src/*/*.cpp}
E=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]+'/config.json'))['n_routed_experts'])" "$MODEL")
REPLICAS=${3:-$(( E + E / 2 ))}
N_GROUPS=${4:-$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]+'/config.json')).get('n_group') or 1)" "$MODEL")}
NODES=${5:-2}
GPUS=${6:-4}
BIN=${DSV3_BIN:-$HERE/../build/release/dsv3}
OUT=$(mktemp -d /tmp/dsv3-expert-load.XXXXXX)
"$BIN" serve --model "$MODEL" --port 0 --no-request-log --expert-load-out "$OUT/load.json" >"$OUT/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  URL=$(grep -o 'listening on http://[^ ]*' "$OUT/serve.log" | head -1 | cut -d' ' -f3 || true)
  [[ -n "$URL" ]] && curl -sf "$URL/health" >/dev/null 2>&1 && break
  sleep 0.2
done
# shellcheck disable=SC2086
python3 - "$URL" $GLOB <<'EOF'
import json, sys, urllib.request
url, files = sys.argv[1], sys.argv[2:]
n = 0
for f in files:
    text = open(f, errors="replace").read()[:1500]
    req = urllib.request.Request(url + "/v1/completions", json.dumps(
        {"prompt": text, "max_tokens": 16, "temperature": 0}).encode(), {"Content-Type": "application/json"})
    json.load(urllib.request.urlopen(req, timeout=300))
    n += 1
print(f"workload: {n} prompts (first 1500 bytes of each file), 16 tokens each")
EOF
kill -TERM $PID; wait $PID || true
trap - EXIT
python3 - "$OUT/load.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
for l, w in zip(j["layers"], j["weight"]):
    mean = sum(w) / len(w)
    print(f"layer {l}: {sum(w)} assignments, busiest expert {max(w) / mean:.2f}x the mean, idlest {min(w) / mean:.2f}x")
EOF
"$BIN" eplb --load "$OUT/load.json" --replicas "$REPLICAS" --groups "$N_GROUPS" --nodes "$NODES" --gpus "$GPUS" >"$OUT/plan.json"
echo "plan: $OUT/plan.json; load: $OUT/load.json"
