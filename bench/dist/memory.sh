#!/usr/bin/env bash
# bench/dist/memory.sh [CONFIG] [DATA]   (defaults: configs/small.json, data/ablation)
#   env: NPS="1 2 4"  PRECISION=bf16  BATCH=8  STEPS=3  DSV3=build/release/dsv3
#        PP=1 (PP > 1: pipeline stages, N/PP data-parallel ranks each, SCHEDULE=1f1b, MB=2·PP
#        micro-batches)
#        BASE=path/to/another/dsv3 (optional: run too, alternating, e.g. a build of an older
#        commit) PASSES=1
#
# Peak resident memory per rank of `mpirun -np N dsv3 train` (docs/distributed.md, "Master
# weights"): CONFIG trained STEPS steps on DATA at global batch BATCH, N data-parallel ranks
# of one thread each, for N in NPS; each rank's maximum RSS from the kernel (GNU time's %M),
# and the median and the largest over the ranks. With BASE, the same runs with that binary
# beside each, so two builds compare in one session. No checkpoint kept but the last.
set -euo pipefail
cd "$(dirname "$0")/../.."
config=${1:-configs/small.json}
data=${2:-data/ablation}
DSV3=${DSV3:-build/release/dsv3}
BASE=${BASE:-}
NPS=${NPS:-"1 2 4"}
PRECISION=${PRECISION:-bf16}
BATCH=${BATCH:-8}
STEPS=${STEPS:-3}
PASSES=${PASSES:-1}
PP=${PP:-1}
SCHEDULE=${SCHEDULE:-1f1b}
MB=${MB:-$((2 * PP))}
[[ -x $DSV3 ]] || { echo "memory.sh: build $DSV3 first" >&2; exit 1; }
[[ -z $BASE || -x $BASE ]] || { echo "memory.sh: BASE=$BASE is not an executable" >&2; exit 1; }
[[ -f $data/meta.json ]] || { echo "memory.sh: no prepared data in $data" >&2; exit 1; }
[[ -x /usr/bin/time ]] || { echo "memory.sh: needs GNU time (apt-get install -y time)" >&2; exit 1; }
tmp=$(mktemp -d /tmp/dsv3-distmem.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
python3 - "$config" "$tmp/config.json" "$PRECISION" "$BATCH" "$STEPS" <<'PY'
import json, os, sys
src, dst, prec, batch, steps = sys.argv[1:6]
c = json.load(open(src))
if not os.path.isabs(c.get("tokenizer", "/")):
    c.pop("tokenizer")  # the data's own copy
c.update(precision=prec, batch=int(batch), steps=int(steps), eval_every=0, checkpoint_every=0)
c["optimizer"]["warmup_steps"] = 1
json.dump(c, open(dst, "w"))
PY
echo "# $(date -u +%FT%TZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $config, $PRECISION, batch $BATCH, $STEPS steps, pp $PP"
printf '%-10s %3s %14s %14s   %s\n' build np "median MiB" "max MiB" "per rank"
run() {  # label binary np
  local label=$1 bin=$2 np=$3 out="$tmp/out-$1-$3" layout="--dp $3"
  (( PP > 1 )) && layout="--dp $((np / PP)) --pp $PP --schedule $SCHEDULE --micro-batches $MB"
  rm -rf "$out"
  rm -f "$tmp"/rss.*
  # Each rank's figure in a file of its own (lines from several ranks can interleave).
  mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS=1 -np "$np" \
    sh -c '/usr/bin/time -o "$0.$OMPI_COMM_WORLD_RANK" -f %M "$@"' "$tmp/rss" \
    "$bin" train --config "$tmp/config.json" --data "$data" --out "$out" \
    $layout --threads 1 --quiet > "$tmp/log" 2>&1 || { cat "$tmp/log" >&2; exit 1; }
  python3 - "$label" "$np" "$tmp" <<'PY'
import glob, statistics, sys
label, np, tmp = sys.argv[1:4]
kb = [int(open(f).read().split()[-1]) for f in sorted(glob.glob(tmp + "/rss.*"))]
assert len(kb) == int(np), f"expected {np} ranks' figures, got {kb}"
mib = sorted(k / 1024 for k in kb)
print(f"{label:<10} {np:>3} {statistics.median(mib):14.1f} {max(mib):14.1f}   " + " ".join(f"{m:.0f}" for m in mib))
PY
}
for pass in $(seq "$PASSES"); do
  for np in $NPS; do
    run new "$DSV3" "$np"
    [[ -z $BASE ]] || run base "$BASE" "$np"
  done
done
