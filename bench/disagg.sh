#!/usr/bin/env bash
# Prefill/decode disaggregation measured (docs/PERF.md "Disaggregated serving"):
#  1. transfer size and time per prompt token: the prefill instance's own account of
#     /v1/disagg/prefill (prefill seconds, bytes, seconds to push them to the decode instance)
#     for prompts of 256, 1024 and 4000 tokens;
#  2. a mixed load (bench/serve_mixed_load.py: short streams decoding while long prompts
#     arrive) on one `dsv3 serve` with all cores, then on a router in front of a prefill and
#     a decode instance with half the cores each.
# Usage: [STREAMS=4] [LONG_PROMPT=1024] [LONG_EVERY=6] bench/disagg.sh MODEL_DIR [DURATION_S] [serve flags...]
# Loopback only; every server is stopped at the end (trap).
set -euo pipefail
MODEL=${1:?usage: bench/disagg.sh MODEL_DIR [DURATION_S]}
DUR=${2:-60}
shift $(( $# >= 2 ? 2 : 1 ))
EXTRA=("$@")
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${DSV3_BIN:-$HERE/../build/release/dsv3}
CORES=$(nproc)
HALF=$(( CORES / 2 > 0 ? CORES / 2 : 1 ))
LOGS=$(mktemp -d /tmp/dsv3-disagg-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

start() {  # start NAME ARGS... → sets URL to the listening address
  local name=$1; shift
  "$BIN" "$@" >"$LOGS/$name.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 600); do
    URL=$(grep -o 'listening on http://[^ ]*' "$LOGS/$name.log" | head -1 | cut -d' ' -f3 || true)
    if [[ -n "$URL" ]] && curl -sf "$URL/health" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  echo "$name did not become healthy:"; cat "$LOGS/$name.log"; exit 1
}
stop_all() { cleanup; PIDS=(); }

VOCAB=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]+'/config.json'))['vocab_size'])" "$MODEL")
COMMON=(--model "$MODEL" --port 0 --no-request-log --speculative off --max-running 16 "${EXTRA[@]}")
echo "dsv3 disaggregation bench: model $MODEL, $CORES cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"

# ---- 1. transfer per prompt token ------------------------------------------------------------
start decode serve "${COMMON[@]}" --threads "$HALF" --role decode; DEC=$URL
start prefill serve "${COMMON[@]}" --threads "$HALF" --role prefill; PRE=$URL
python3 - "$PRE" "$DEC" "$VOCAB" <<'EOF'
import json, random, sys, urllib.request
pre, dec, vocab = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(3)
print("prompt_tokens  bytes       bytes/token  prefill_s  transfer_s  transfer_us/token  transfer_MB/s")
for n in (256, 1024, 4000):
    for rep in range(3):  # the last of three (the first warms the allocator and the connection)
        body = {"endpoint": "completions", "transfer_id": f"bench-{n}-{rep}", "decode_url": dec,
                "request": {"prompt": [rng.randrange(3, vocab) for _ in range(n)], "max_tokens": 1}}
        req = urllib.request.Request(pre + "/v1/disagg/prefill", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        a = json.load(urllib.request.urlopen(req, timeout=600))
    b, t = a["bytes"], a["transfer_s"]
    print(f"{n:>13}  {b:>10}  {b / n:>11.0f}  {a['prefill_s']:>9.3f}  {t:>10.4f}  {t / n * 1e6:>17.1f}  {b / t / 1e6:>13.0f}")
EOF

# ---- 2. mixed load ---------------------------------------------------------------------------
LOAD=(--vocab "$VOCAB" --duration "$DUR" --streams "${STREAMS:-4}" --short-prompt 64 --short-tokens 64
      --long-prompt "${LONG_PROMPT:-1024}" --long-tokens 4 --long-every "${LONG_EVERY:-6}")
echo "load: ${STREAMS:-4} short streams (64-token prompts, 64 tokens), a ${LONG_PROMPT:-1024}-token prompt every ${LONG_EVERY:-6} s, ${DUR} s"
stop_all
start mixed serve "${COMMON[@]}" --threads "$CORES"
echo "mixed ($CORES threads, one process):"
python3 "$HERE/serve_mixed_load.py" --url "$URL" "${LOAD[@]}" | tee "$LOGS/mixed.json"
stop_all
start decode serve "${COMMON[@]}" --threads "$HALF" --role decode; DEC=$URL
start prefill serve "${COMMON[@]}" --threads "$HALF" --role prefill; PRE=$URL
start router router --prefill "$PRE" --decode "$DEC" --timeout 600
echo "disaggregated (prefill $HALF threads + decode $HALF threads, router):"
python3 "$HERE/serve_mixed_load.py" --url "$URL" "${LOAD[@]}" | tee "$LOGS/disagg.json"
curl -s "$URL/metrics" | grep -E '^dsv3_router_(transfer|prefill|requests)' || true
echo "logs: $LOGS"
