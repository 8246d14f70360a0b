#!/usr/bin/env bash
# scripts/ablation.sh [STEPS] [OUT_DIR]
#   The load-balancing and MTP ablations of docs/ablation.md at tiny scale: configs/tiny.json
#   trained for STEPS steps (default 150) on the same data in the same order, varying only
#     auxfree   γ = 0.01,  α = 1e-4 (the report's recipe with γ scaled to a short run: the
#               bias must be able to move by about the spread of the sigmoid scores, ~0.1–1,
#               within the run; the report's 0.001 is for ~10^5 steps), MTP on
#     auxloss   γ = 0,     α = 0.01 (an auxiliary balance loss only)
#     neither   γ = 0,     α = 0
#     nomtp     the baseline without the MTP objective
#   and prints, per run, the mean main loss and the mean MaxVio per MoE layer over the last
#   20% of steps. Needs data/train and data/tokenizer (scripts/demo.sh or corpus.sh +
#   tokenizer.sh + dsv3 data prepare).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-150}
out=${2:-runs/ablation}
dsv3=${DSV3:-build/release/dsv3}
mkdir -p "$out"
variant() {  # name, python expression editing the config dict c
  python3 - "$1" "$2" "$steps" "$out" <<'PY'
import json, sys, os
name, edit, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = json.load(open("configs/tiny.json"))
c["tokenizer"] = os.path.abspath("data/tokenizer")
c["steps"] = steps
c["optimizer"]["decay_start"] = steps // 2
c["optimizer"]["warmup_steps"] = max(1, steps // 20)
c["mtp"]["lambda_switch_step"] = (2 * steps) // 3
c["checkpoint_every"] = 0
exec(edit)
json.dump(c, open(f"{out}/{name}.json", "w"), indent=1)
PY
}
variant auxfree "c['balance'] = {'gamma': 0.01, 'alpha': 0.0001}"
variant auxloss "c['balance'] = {'gamma': 0.0, 'alpha': 0.01}"
variant neither "c['balance'] = {'gamma': 0.0, 'alpha': 0.0}"
variant nomtp "c['balance'] = {'gamma': 0.01, 'alpha': 0.0001}; c['mtp']['enabled'] = False"
for v in auxfree auxloss neither nomtp; do
  rm -rf "$out/$v"
  echo "== $v"
  "$dsv3" train --config "$out/$v.json" --data data/train --out "$out/$v" --quiet
done
python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
print("%-8s %10s %10s %s" % ("run", "main loss", "mtp loss", "MaxVio per MoE layer (mean, last 20% of steps)"))
for v in ["auxfree", "auxloss", "neither", "nomtp"]:
    rows = [json.loads(l) for l in open(f"{out}/{v}/metrics.jsonl")]
    tail = rows[int(len(rows) * 0.8):]
    main = sum(r["main_loss"] for r in tail) / len(tail)
    mtp = [r["mtp_loss"][0] for r in tail if r["mtp_loss"]]
    nl = len(tail[0]["maxvio"])
    mv = [sum(r["maxvio"][i] for r in tail) / len(tail) for i in range(nl)]
    print("%-8s %10.4f %10s %s" % (v, main, "%.4f" % (sum(mtp) / len(mtp)) if mtp else "-",
                                   " ".join("%.3f" % x for x in mv)))
PY
