#!/usr/bin/env bash
# Context extension of the demo model (docs/long-context.md, report §4.3): two phases of
# `dsv3 train --init`, 256 -> 1024 -> 4096 tokens with YaRN (configs/tiny-ext-1024.json,
# configs/tiny-ext-4096.json), each starting from the previous phase's last checkpoint with a
# fresh optimizer. Then a summary line per phase: steps, time, final loss, median tokens/s.
#
#   scripts/extend.sh [INIT [DATA [OUT]]]
#     INIT  the pre-trained checkpoint   (default runs/demo/tiny/step-000300, from scripts/demo.sh)
#     DATA  the prepared data            (default data/train)
#     OUT   where the phases go          (default runs/ext: OUT/ext-1024, OUT/ext-4096)
set -euo pipefail
cd "$(dirname "$0")/.."
init=${1:-runs/demo/tiny/step-000300}
data=${2:-data/train}
out=${3:-runs/ext}
dsv3=${DSV3:-build/release/dsv3}
[[ -x $dsv3 ]] || { echo "build dsv3 first: cmake --preset release && cmake --build build/release --target dsv3" >&2; exit 2; }
grep -m1 "model name" /proc/cpuinfo || true
for len in 1024 4096; do
  echo "== phase $len: $init -> $out/ext-$len"
  "$dsv3" train --config configs/tiny-ext-$len.json --data "$data" --out "$out/ext-$len" --init "$init"
  init="$out/ext-$len/$(cat "$out/ext-$len/latest")"
done
for len in 1024 4096; do
  python3 - "$out/ext-$len/metrics.jsonl" "$len" <<'PY'
import json, statistics, sys
m = [json.loads(l) for l in open(sys.argv[1])]
last = m[-1]
print("ext-%s: %d steps, %.0f s, %d tokens, final loss %.3f (main %.3f, MTP %.3f, mean of the last 10 main %.3f), "
      "median %.0f tokens/s" % (sys.argv[2], last["step"], last["time_s"], last["tokens"], last["loss"],
      last["main_loss"], last["mtp_loss"][0] if last["mtp_loss"] else float("nan"),
      statistics.mean(x["main_loss"] for x in m[-10:]), statistics.median(x["tokens_per_s"] for x in m)))
PY
done
