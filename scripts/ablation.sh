#!/usr/bin/env bash
# scripts/ablation.sh [STEPS] [OUT_DIR]
#   The report's training claims as ablations (docs/ablation.md): CONFIG (default
#   configs/small.json: 39.7M parameters, 10.3M activated, MoE + one MTP module) trained for
#   STEPS steps (default 2000) on the same data in the same order, held-out loss every STEPS/20
#   steps, varying only
#     auxfree   the report's recipe: BF16 matmuls, γ = 0.001 bias speed, α = 1e-4, MTP on
#     fp8       the same in FP8 (1x128 activation tiles, 128x128 weight blocks)
#     nomtp     the same without the MTP objective
#     auxloss   γ = 0, α = 0.01 (an auxiliary balance loss only)
#     neither   γ = 0, α = 0
#   ARMS="auxfree fp8" runs a subset. An arm that finished is kept; one that stopped part-way
#   (its checkpoints are written every STEPS/8 steps) continues with `dsv3 train --resume`,
#   so the runs can be spread over several sessions. Then it prints the table of
#   docs/ablation.md and draws OUT_DIR/{val_loss,maxvio,load}.png (gnuplot).
#   DATA (default data/ablation) is prepared from data/corpus's code, en and zh files (not
#   chat.jsonl, which repeats them) with 2% of the documents held out when missing (scripts/demo.sh or corpus.sh + tokenizer.sh make data/corpus and
#   data/tokenizer). DSV3 names the binary (default build/release/dsv3).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-2000}
out=${2:-runs/ablation}
config=${CONFIG:-configs/small.json}
data=${DATA:-data/ablation}
arms=${ARMS:-auxfree fp8 nomtp auxloss neither}
dsv3=${DSV3:-build/release/dsv3}
[[ $steps =~ ^[0-9]+$ && $steps -ge 40 ]] || { echo "ablation.sh: STEPS must be a number >= 40, got '$steps'" >&2; exit 2; }
[[ -x $dsv3 ]] || { echo "ablation.sh: $dsv3 not built (cmake --build --preset release --target dsv3)" >&2; exit 1; }
[[ -f $config ]] || { echo "ablation.sh: no config $config" >&2; exit 1; }
mkdir -p "$out"
if [[ ! -f $data/meta.json || ! -d $data/val ]]; then
  [[ -d data/corpus && -f data/tokenizer/tokenizer.json ]] ||
    { echo "ablation.sh: $data is missing and so are data/corpus or data/tokenizer (run scripts/demo.sh --no-serve first)" >&2; exit 1; }
  # The pretraining files only, in the order a directory scan reads them: chat.jsonl repeats
  # their text and would leak the held-out documents into training (docs/data.md).
  "$dsv3" data prepare --tokenizer data/tokenizer \
    --input data/corpus/code.jsonl data/corpus/en.jsonl data/corpus/zh.jsonl --out "$data" --val-fraction 0.02
fi

variant() {  # name, python statements editing the config dict c
  python3 - "$1" "$2" "$steps" "$out" "$config" <<'PY'
import json, os, sys
name, edit, steps, out, config = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
c = json.load(open(config))
c["tokenizer"] = os.path.abspath("data/tokenizer")
c["steps"] = steps
c["optimizer"]["warmup_steps"] = max(1, steps // 20)
c["optimizer"]["decay_start"] = steps // 2
c["mtp"]["lambda_switch_step"] = (7 * steps) // 10
c["eval_every"] = max(1, steps // 20)
c["checkpoint_every"] = max(1, steps // 8)
c["keep_checkpoints"] = 1
c["balance"] = {"gamma": 0.001, "alpha": 0.0001}
exec(edit)
json.dump(c, open(f"{out}/{name}.json", "w"), indent=1)
PY
}

last_step() {  # the last step logged in DIR/metrics.jsonl, 0 without one
  [[ -s $1/metrics.jsonl ]] || { echo 0; return; }
  tail -n 1 "$1/metrics.jsonl" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["step"])'
}

for v in $arms; do
  case $v in
    auxfree) variant auxfree "" ;;
    fp8) variant fp8 "c['precision'] = 'fp8'" ;;
    nomtp) variant nomtp "c['mtp']['enabled'] = False" ;;
    auxloss) variant auxloss "c['balance'] = {'gamma': 0.0, 'alpha': 0.01}" ;;
    neither) variant neither "c['balance'] = {'gamma': 0.0, 'alpha': 0.0}" ;;
    *) echo "ablation.sh: unknown arm '$v' (auxfree fp8 nomtp auxloss neither)" >&2; exit 2 ;;
  esac
  done_steps=$(last_step "$out/$v")
  if [[ $done_steps -ge $steps ]]; then
    echo "== $v: finished earlier ($done_steps steps)"
    continue
  fi
  if ls -d "$out/$v"/step-* >/dev/null 2>&1; then
    echo "== $v: resuming after step $done_steps"
    "$dsv3" train --config "$out/$v.json" --data "$data" --out "$out/$v" --resume --quiet
  else
    echo "== $v"
    rm -rf "${out:?}/$v"
    "$dsv3" train --config "$out/$v.json" --data "$data" --out "$out/$v" --quiet
  fi
done

# The table: per arm, the held-out loss at the end, the training loss's mean and spread over
# the last 10% of steps, MaxVio per MoE layer (mean over the last 10%), tokens/s (median), and
# the MTP module's acceptance as a one-token draft on held-out text.
python3 - "$out" "$arms" "$steps" "$dsv3" "$data" <<'PY'
import json, os, statistics, subprocess, sys
out, arms, steps, dsv3, data = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), sys.argv[4], sys.argv[5]
res = {}
for v in arms:
    path = f"{out}/{v}/metrics.jsonl"
    if not os.path.exists(path):
        continue
    rows = [json.loads(l) for l in open(path) if l.strip()]
    if not rows or rows[-1]["step"] < steps:
        print(f"{v}: not finished ({rows[-1]['step'] if rows else 0} of {steps} steps)")
        continue
    tail = [r for r in rows if r["step"] > steps - steps // 10]
    main = [r["main_loss"] for r in tail]
    val = [r for r in rows if "val_loss" in r]
    nl = len(tail[0]["maxvio"])
    mv = [statistics.mean(r["maxvio"][i] for r in tail) for i in range(nl)]
    tps = statistics.median(r["tokens_per_s"] for r in rows[5:]) if len(rows) > 5 else float("nan")
    res[v] = dict(val=val[-1]["val_loss"] if val else float("nan"),
                  val_mtp=(val[-1].get("val_mtp_loss") or [None])[0] if val else None,
                  main=statistics.mean(main), spread=statistics.pstdev(main), maxvio=mv,
                  mean_maxvio=statistics.mean(mv), tps=tps)
    ckpts = sorted(d for d in os.listdir(f"{out}/{v}") if d.startswith("step-"))
    if ckpts and v != "nomtp":
        # Acceptance of the MTP module as a one-token draft, greedy, on the start of a held-out
        # document's tokens (the same ids for every arm).
        try:
            import array
            ids = array.array("I")  # uint32 LE (docs/data.md)
            with open(f"{data}/val/tokens.bin", "rb") as f:
                ids.frombytes(f.read(4 * 64))
            r = subprocess.run([dsv3, "generate", "--model", f"{out}/{v}/{ckpts[-1]}", "--ids",
                                ",".join(str(i) for i in ids[1:64]), "--max-new-tokens", "128",
                                "--speculative", "mtp", "--draft", "1", "--json"],
                               capture_output=True, text=True, check=True)
            res[v]["accept"] = json.loads(r.stdout.strip().splitlines()[-1])["stats"]["speculation"]["acceptance"]
        except Exception as e:  # the table still prints
            print(f"{v}: acceptance not measured: {e}")
if not res:
    sys.exit("ablation.sh: no finished arm")
print(f"\n{'arm':<8} {'val loss':>9} {'val MTP':>8} {'train (last 10%)':>18} {'tok/s':>6} {'accept':>6}  MaxVio per MoE layer (mean)")
for v, r in res.items():
    vm = f"{r['val_mtp']:.4f}" if r["val_mtp"] is not None else "-"
    acc = f"{r['accept']:.3f}" if "accept" in r else "-"
    print(f"{v:<8} {r['val']:9.4f} {vm:>8} {r['main']:9.4f} ± {r['spread']:.4f} {r['tps']:6.0f} {acc:>6}  "
          + " ".join(f"{x:.3f}" for x in r["maxvio"]) + f"  (mean {r['mean_maxvio']:.3f})")
if "auxfree" in res and "fp8" in res:
    b, f = res["auxfree"]["val"], res["fp8"]["val"]
    print(f"\nFP8 vs BF16: held-out loss {f:.4f} vs {b:.4f}, relative gap {100 * (f - b) / b:+.3f}% (report: < 0.25%)")
json.dump(res, open(f"{out}/summary.json", "w"), indent=1)
PY

# Figures (gnuplot): held-out loss of every arm, mean MaxVio of every arm (smoothed over 20
# steps), and each arm's expert load at the last step (load / mean, MoE layer × expert).
if command -v gnuplot >/dev/null; then
  python3 - "$out" "$arms" <<'PY'
import json, os, sys
out, arms = sys.argv[1], sys.argv[2].split()
for v in arms:
    p = f"{out}/{v}/metrics.jsonl"
    if not os.path.exists(p):
        continue
    rows = [json.loads(l) for l in open(p) if l.strip()]
    with open(f"{out}/{v}.val.tsv", "w") as f:
        for r in rows:
            if "val_loss" in r:
                f.write(f"{r['step']}\t{r['val_loss']}\n")
    with open(f"{out}/{v}.maxvio.tsv", "w") as f:
        win = []
        for r in rows:
            win = (win + [sum(r["maxvio"]) / len(r["maxvio"])])[-20:]
            f.write(f"{r['step']}\t{sum(win) / len(win)}\n")
    # Per MoE layer (20-step moving average), for the per-layer figure.
    nl = len(rows[0]["maxvio"])
    main_layers = json.load(open(f"{out}/{v}.json"))["model"]["num_hidden_layers"]
    with open(f"{out}/{v}.maxvio_titles.txt", "w") as f:
        for li in rows[0].get("moe_layers", range(1, nl + 1)):
            f.write(f"layer {li} (MTP module {li - main_layers + 1})\n" if li >= main_layers
                    else f"layer {li}\n")
    with open(f"{out}/{v}.maxvio_layers.tsv", "w") as f:
        wins = [[] for _ in range(nl)]
        for r in rows:
            for i in range(nl):
                wins[i] = (wins[i] + [r["maxvio"][i]])[-20:]
            f.write(f"{r['step']}\t" + "\t".join(str(sum(w) / len(w)) for w in wins) + "\n")
    with open(f"{out}/{v}.train.tsv", "w") as f:  # training loss, 50-step moving average
        win = []
        for r in rows:
            win = (win + [r["main_loss"]])[-50:]
            f.write(f"{r['step']}\t{sum(win) / len(win)}\n")
    load = rows[-1]["load"]
    with open(f"{out}/{v}.load.tsv", "w") as f:
        for li, l in enumerate(load):
            m = sum(l) / len(l) or 1
            for e, x in enumerate(l):
                f.write(f"{e}\t{li}\t{x / m}\n")
            f.write("\n")
PY
  present=()
  for v in $arms; do [[ -s $out/$v.val.tsv ]] && present+=("$v"); done
  if ((${#present[@]})); then
    val_plot="" vio_plot="" train_plot=""
    for v in "${present[@]}"; do
      val_plot+="${val_plot:+, }'$out/$v.val.tsv' u 1:2 w lp lw 2 t '$v'"
      vio_plot+="${vio_plot:+, }'$out/$v.maxvio.tsv' u 1:2 w l lw 2 t '$v'"
      train_plot+="${train_plot:+, }'$out/$v.train.tsv' u 1:2 w l lw 2 t '$v'"
    done
    gnuplot <<GP
set terminal pngcairo size 900,520 font ",10" noenhanced
set grid; set key top right; set xlabel 'step'
set output '$out/val_loss.png'
set title 'held-out loss (main head)'; set ylabel 'cross-entropy (nats)'
plot $val_plot
set output '$out/maxvio.png'
set title 'MaxVio, mean over MoE layers (20-step moving average)'; set ylabel 'MaxVio'
plot $vio_plot
set output '$out/train_loss.png'
set title 'training loss (main head, 50-step moving average)'; set ylabel 'cross-entropy (nats)'
plot $train_plot
GP
    # MaxVio per MoE layer, the balancing arms (all arms when none of them ran).
    bal=()
    for v in "${present[@]}"; do [[ $v == auxfree || $v == auxloss || $v == neither ]] && bal+=("$v"); done
    ((${#bal[@]})) || bal=("${present[@]}")
    nl=$(head -n 1 "$out/${bal[0]}.maxvio_layers.tsv" | awk -F'\t' '{print NF - 1}')
    {
      echo "set terminal pngcairo size 900,$((200 * nl + 80)) font \",10\" noenhanced"
      echo "set output '$out/maxvio_layers.png'"
      echo "set multiplot layout $nl,1 title 'MaxVio per MoE layer (20-step moving average)'"
      echo "set grid; set key top right; set xlabel 'step'; set ylabel 'MaxVio'; set logscale y"
      for ((l = 0; l < nl; l++)); do
        p=""
        for v in "${bal[@]}"; do p+="${p:+, }'$out/$v.maxvio_layers.tsv' u 1:$((l + 2)) w l lw 2 t '$v'"; done
        echo "set title '$(sed -n "$((l + 1))p" "$out/${bal[0]}.maxvio_titles.txt")'; plot $p"
      done
      echo "unset multiplot"
    } | gnuplot
    n=${#present[@]}
    {
      echo "set terminal pngcairo size 900,$((160 * n + 80)) font \",10\" noenhanced"
      echo "set output '$out/load.png'"
      echo "set multiplot layout $n,1 title 'expert load at the last step (load / mean; rows: MoE layers)'"
      echo "set palette defined (0 'white', 1 'orange', 3 'red', 6 'black'); set cbrange [0:4]"
      echo "set xlabel 'expert'; set ylabel 'MoE layer'; unset key; set autoscale fix"
      for v in "${present[@]}"; do echo "set title '$v'; plot '$out/$v.load.tsv' u 1:2:3 w image"; done
      echo "unset multiplot"
    } | gnuplot
    echo "wrote $out/{val_loss,train_loss,maxvio,maxvio_layers,load}.png"
  fi
fi
