#!/usr/bin/env bash
# Training curves from a `dsv3 train` run's metrics.jsonl: a PNG with the main, MTP and total
# loss against the step (tokens on the top axis) and MaxVio of every MoE layer against the step.
#   scripts/plot_training.sh OUT_DIR/metrics.jsonl [OUT.png]   (default: next to the metrics)
# Needs gnuplot (gnuplot-nox, in scripts/deps.sh) and python3 (to flatten the JSON lines).
set -euo pipefail
M=${1:?usage: scripts/plot_training.sh METRICS.jsonl [OUT.png]}
[[ -s $M ]] || { echo "plot_training.sh: $M is missing or empty" >&2; exit 1; }
PNG=${2:-$(dirname "$M")/training.png}
command -v gnuplot >/dev/null || { echo "plot_training.sh: gnuplot not found (apt-get install -y gnuplot-nox)" >&2; exit 1; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
# One TSV row per logged step: step tokens loss main_loss mtp_loss_0.. maxvio_0..; the header
# file says how many MTP and MoE columns there are and the layer index of each MoE column.
python3 - "$M" "$TMP" <<'PY'
import json, sys
rows = []
for n, line in enumerate(open(sys.argv[1]), 1):
    line = line.strip()
    if not line:
        continue
    try:
        rows.append(json.loads(line))
    except ValueError:
        sys.exit("plot_training.sh: %s line %d is not JSON" % (sys.argv[1], n))
if not rows:
    sys.exit("plot_training.sh: %s holds no metrics" % sys.argv[1])
n_mtp = max(len(r.get("mtp_loss") or []) for r in rows)
n_moe = max(len(r.get("maxvio") or []) for r in rows)
layers = next((r.get("moe_layers") for r in rows if r.get("moe_layers")), list(range(n_moe)))
with open(sys.argv[2] + "/data.tsv", "w") as f:
    for r in rows:
        mtp = list(r.get("mtp_loss") or []) + ["NaN"] * n_mtp
        mv = list(r.get("maxvio") or []) + ["NaN"] * n_moe
        f.write("\t".join(str(v) for v in [r["step"], r.get("tokens", "NaN"), r["loss"], r.get("main_loss", "NaN")]
                          + mtp[:n_mtp] + mv[:n_moe]) + "\n")
with open(sys.argv[2] + "/shape", "w") as f:
    f.write("%d %d %s\n" % (n_mtp, n_moe, " ".join(str(l) for l in layers[:n_moe])))
PY
read -r N_MTP N_MOE LAYERS < "$TMP/shape"
LAYERS=($LAYERS)
D="$TMP/data.tsv"
loss_plot="'$D' u 1:3 w l lw 2 t 'loss (total)', '$D' u 1:4 w l lw 2 t 'main loss'"
for ((k = 0; k < N_MTP; ++k)); do
  loss_plot+=", '$D' u 1:$((5 + k)) w l lw 2 t 'MTP loss $((k + 1))'"
done
vio_plot=""
for ((i = 0; i < N_MOE; ++i)); do
  [[ -n $vio_plot ]] && vio_plot+=", "
  vio_plot+="'$D' u 1:$((5 + N_MTP + i)) w l lw 1.5 t 'layer ${LAYERS[$i]:-$i}'"
done
[[ -n $vio_plot ]] || vio_plot="NaN t 'no MoE layers'"
gnuplot <<GP
set terminal pngcairo size 1000,900 font ",10" noenhanced
set output '$PNG'
set datafile separator "\t"
set multiplot layout 2,1 title "$(basename "$(dirname "$M")")/$(basename "$M")"
set grid
set key top right
set xlabel 'step'
set ylabel 'cross-entropy (nats)'
stats '$D' u 1:2 nooutput name 'S'
set x2tics
set x2label 'tokens'
set link x2 via x*(S_max_y/S_max_x) inverse x*(S_max_x/S_max_y)
set title 'loss'
plot $loss_plot
unset x2tics; unset x2label; unset link x2
set title 'MaxVio per MoE layer (max load / mean load - 1)'
set ylabel 'MaxVio'
plot $vio_plot
unset multiplot
GP
echo "wrote $PNG"
