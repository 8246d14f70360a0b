#!/usr/bin/env bash
# bench/train_memory.sh [CONFIG] [DATA]
#   Peak resident memory of `dsv3 train` by precision and batch size (docs/training.md
#   "Memory"): CONFIG (default configs/small.json) trained for 3 steps on DATA (default
#   data/ablation) at batch 1, 2 and 8 in bf16 and fp8 (F32 moments), and bf16 with BF16
#   moments at batch 2, each run's maximum RSS from the kernel (getrusage of the child).
#   Prints MB per run, the bytes per parameter at batch 1 and the per-token slope between
#   batch 2 and 8 (tokens = batch x seq_len). One thread; no checkpoints or validation kept.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-configs/small.json}
data=${2:-data/ablation}
dsv3=${DSV3:-build/release/dsv3}
[[ -x $dsv3 ]] || { echo "train_memory.sh: build $dsv3 first" >&2; exit 1; }
[[ -f $data/meta.json ]] || { echo "train_memory.sh: no prepared data in $data" >&2; exit 1; }
python3 - "$dsv3" "$config" "$data" <<'PY'
import json, os, resource, subprocess, sys, tempfile
dsv3, config, data = sys.argv[1:4]
base = json.load(open(config))
if not os.path.isabs(base.get("tokenizer", "/")):
    base.pop("tokenizer")  # the data's own copy (dsv3 data prepare keeps one)
tmp = tempfile.mkdtemp(prefix="dsv3-trainmem-")
def peak_mb(prec, batch, moments="f32"):
    c = json.loads(json.dumps(base))
    c.update(precision=prec, batch=batch, steps=3, eval_every=0, checkpoint_every=1000)
    c["optimizer"]["warmup_steps"] = 1
    if moments != "f32":
        c["optimizer"]["moments"] = moments
    cfg = f"{tmp}/{prec}-{batch}-{moments}.json"
    json.dump(c, open(cfg, "w"))
    out = f"{tmp}/{prec}-{batch}-{moments}"
    # A fresh process per run: RUSAGE_CHILDREN's maximum is over all children so far, so
    # each measurement runs in its own python child that reports its one grandchild.
    probe = ("import resource,subprocess,sys; subprocess.run(sys.argv[1:], check=True, "
             "stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([sys.executable, "-c", probe, dsv3, "train", "--config", cfg, "--data", data,
                        "--out", out, "--threads", "1", "--quiet"],
                       capture_output=True, text=True, check=True)
    return int(r.stdout.strip()) / 1024.0  # KiB -> MiB
params = None
rows = []
for prec in ("bf16", "fp8"):
    mb = {b: peak_mb(prec, b) for b in (1, 2, 8)}
    rows.append((prec, "f32", mb))
rows.append(("bf16", "bf16", {2: peak_mb("bf16", 2, "bf16")}))
seq = base["seq_len"]
print(f"{config}, seq_len {seq}, 3 steps, 1 thread: peak resident MB")
print(f"{'precision':<10}{'moments':<9}{'batch 1':>10}{'batch 2':>10}{'batch 8':>10}{'KB per token (2->8)':>22}")
res = []
for prec, mom, mb in rows:
    cells = "".join(f"{mb[b]:10.1f}" if b in mb else f"{'':>10}" for b in (1, 2, 8))
    slope = (mb[8] - mb[2]) * 1024 / ((8 - 2) * seq) if 2 in mb and 8 in mb else None
    print(f"{prec:<10}{mom:<9}{cells}{(f'{slope:.1f}' if slope else ''):>22}")
    res.append(dict(precision=prec, moments=mom, peak_mb=mb, kb_per_token=slope))
json.dump(res, open(os.environ.get("OUT_JSON", "/dev/null"), "w"), indent=1)
PY
