#!/usr/bin/env bash
# Issue 7's measurement, end to end: train configs/mtp-bench.json (a 60M-parameter dense
# MLA model with one MTP module; 121 MB of BF16 weights read per decode step, ~4x the L3)
# on the demo corpus with the MTP objective, then decode the same prompts plainly and with
# MTP speculation in one run (`dsv3 bench speculative`).
#   bench/mtp_speculative.sh [RUN_DIR] [TOKENS] [DRAFTS] [REPS]
# defaults: runs/mtp-bench, 128 new tokens per prompt, drafts "1,2,3:0.2,3:0.3" (N:P = up to
# N drafts, adaptive: stop once their joint MTP probability < P), 3 reps.
# Training (900 steps, 3.7M tokens) takes ~95 minutes on two idle Zen 4 cores (~650
# tokens/s); an interrupted run is resumed, and a finished one is not repeated. The demo corpus and tokenizer come
# from scripts/corpus.sh / scripts/tokenizer.sh (as in scripts/demo.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/mtp-bench}
TOKENS=${2:-128}
DRAFTS=${3:-1,2,3:0.2,3:0.3}
REPS=${4:-3}
DSV3=${DSV3:-build/release/dsv3}
[[ -x $DSV3 ]] || { echo "mtp_speculative.sh: $DSV3 not built (cmake --build build/release)" >&2; exit 1; }
if [[ ! -f data/train/meta.json ]]; then
  scripts/corpus.sh data/corpus
  [[ -f data/tokenizer/tokenizer.json ]] || scripts/tokenizer.sh data/corpus data/tokenizer 4096
  "$DSV3" data prepare --tokenizer data/tokenizer --input data/corpus --out data/train
fi
steps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps"])' configs/mtp-bench.json)
want=$(printf 'step-%06d' "$steps")
if [[ "$(cat "$RUN/latest" 2>/dev/null)" != "$want" ]]; then
  if [[ -f "$RUN/latest" ]]; then
    "$DSV3" train --config configs/mtp-bench.json --data data/train --out "$RUN" --resume
  else
    "$DSV3" train --config configs/mtp-bench.json --data data/train --out "$RUN"
  fi
fi
"$DSV3" bench speculative --model "$RUN/$want" --tokens "$TOKENS" --draft "$DRAFTS" --reps "$REPS"
