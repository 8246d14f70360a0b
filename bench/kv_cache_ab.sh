#!/usr/bin/env bash
# A/B of two dsv3 binaries on long-context decode: `bench decode` at several context lengths
# and every latent-cache form, rounds interleaved (A then B) so both see the same machine, then
# the medians per (binary, context, cache): tokens/s, share of the roofline (each run's own
# membw), attention ms per step. Made for the BF16 latent kernel (docs/PERF.md, "Long-context
# decode").
#
#   bench/kv_cache_ab.sh OLD_DSV3 NEW_DSV3 MODEL [ROUNDS=3] [CONTEXTS=256,4096,8192,32704] [STEPS=40]
set -euo pipefail
old=$1 new=$2 model=$3 rounds=${4:-3} contexts=${5:-256,4096,8192,32704} steps=${6:-40}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for r in $(seq 1 "$rounds"); do
  for arm in old new; do
    bin=$old; [[ $arm == new ]] && bin=$new
    echo "=== round $r $arm $(date -u +%T)" | tee -a "$log"
    "$bin" bench decode --model "$model" --context "$contexts" --kv-cache f32,bf16,fp8 \
        --steps "$steps" --profile 2>&1 | tee -a "$log"
  done
done
python3 - "$log" <<'PY'
import collections, re, statistics, sys
tok, pct, att = (collections.defaultdict(list) for _ in range(3))
arm = None
for line in open(sys.argv[1]):
    if m := re.match(r"=== round \d+ (\w+)", line):
        arm = m.group(1)
    elif m := re.match(r"context (\d+), (\w+) cache, ms per step: attention ([\d.]+)", line):
        att[(arm, int(m.group(1)), m.group(2))].append(float(m.group(3)))
    elif m := re.match(r"\s+(\d+)\s+(f32|bf16|fp8)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)%", line):
        k = (arm, int(m.group(1)), m.group(2))
        tok[k].append(float(m.group(3)))
        pct[k].append(float(m.group(4)))
med = statistics.median
print("context cache | old tok/s | new tok/s | new/old | of roofline old -> new | attention ms old -> new | new vs f32 cache")
for ctx in sorted({k[1] for k in tok}):
    for c in ("f32", "bf16", "fp8"):
        o, n = med(tok[("old", ctx, c)]), med(tok[("new", ctx, c)])
        f = med(tok[("new", ctx, "f32")])
        print(f"{ctx} {c} | {o:.1f} | {n:.1f} | {n / o:.2f}x | {med(pct[('old', ctx, c)]):.0f}% -> "
              f"{med(pct[('new', ctx, c)]):.0f}% | {med(att[('old', ctx, c)]):.1f} -> "
              f"{med(att[('new', ctx, c)]):.1f} | {n / f:.2f}x")
PY
