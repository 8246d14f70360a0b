#!/usr/bin/env bash
# Two dsv3 binaries' training step on one config, alternating (so both see the same machine
# load), then the medians: tokens/s, CPU seconds per step, and the pairwise ratio new/old.
#   bench/train_ab.sh OLD NEW [CONFIG] [STEPS] [PAIRS] [PRECISION]
# defaults: configs/moe-150m.json, 4 timed steps, 8 pairs, bf16. Threads: THREADS (2).
# Both run with OMP_WAIT_POLICY unset (their own thread pool's default, as train_vs_torch.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 2 ]] || { echo "usage: bench/train_ab.sh OLD NEW [CONFIG] [STEPS] [PAIRS] [PRECISION]" >&2; exit 2; }
OLD=$1; NEW=$2
CONFIG=${3:-configs/moe-150m.json}; STEPS=${4:-4}; PAIRS=${5:-8}; PREC=${6:-bf16}
THREADS=${THREADS:-2}
for b in "$OLD" "$NEW"; do [[ -x $b ]] || { echo "train_ab.sh: $b is not an executable" >&2; exit 1; }; done
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
echo "# $(date -u +%FT%TZ) $CONFIG $PREC, $STEPS steps, $PAIRS pairs; uptime before: $(uptime)"
for _ in $(seq "$PAIRS"); do
  for side in old new; do
    bin=$OLD; [[ $side == new ]] && bin=$NEW
    printf '%s ' "$side" >> "$LOG"
    env -u OMP_WAIT_POLICY "$bin" bench train --config "$CONFIG" --steps "$STEPS" --precision "$PREC" \
        --threads "$THREADS" --json | tee -a "$LOG"
  done
done
/usr/bin/python3 - "$LOG" <<'PY'
import json, statistics as st, sys
rows = [(l.split(" ", 1)[0], json.loads(l.split(" ", 1)[1])) for l in open(sys.argv[1]) if " {" in l]
tok = {k: [r["tokens_per_s"] for s, r in rows if s == k] for k in ("old", "new")}
cpu = {k: [r["cpu_s"] for s, r in rows if s == k] for k in ("old", "new")}
for k in ("old", "new"):
    print(f"{k}: tokens/s median {st.median(tok[k]):.1f} (min {min(tok[k]):.1f}, max {max(tok[k]):.1f}), "
          f"CPU s/step median {st.median(cpu[k]):.3f} (min {min(cpu[k]):.3f})")
pair = [b / a for a, b in zip(tok["old"], tok["new"])]
print(f"new/old: ratio of medians {st.median(tok['new']) / st.median(tok['old']):.3f}, "
      f"pairwise median {st.median(pair):.3f}, CPU s/step medians {st.median(cpu['old']) / st.median(cpu['new']):.3f}")
PY
