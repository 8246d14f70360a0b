#!/usr/bin/env bash
# tests/serve/make_model.sh OUT_DIR — the tiny FP8 model the `dsv3 serve` end-to-end tests run.
#
# A byte-level BPE trained on a short text (the chat template's role tokens are special
# tokens), tokenizer_config.json naming BOS / EOS, and random weights whose vocab_size is the
# tokenizer's size exactly, so every id the model can emit decodes. The architecture is
# configs/tiny.json's, cut to 2 layers so the ASan build serves it quickly.
# DSV3_BIN: the dsv3 binary (default build/release/dsv3). OUT_DIR is replaced; the file
# OUT_DIR/.complete marks a finished model.
set -euo pipefail
out=${1:?usage: make_model.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
dsv3=${DSV3_BIN:-$here/../../build/release/dsv3}
vocab=512
[[ -x $dsv3 ]] || { echo "make_model.sh: no dsv3 binary at '$dsv3' (set DSV3_BIN)" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out"
tmp=$(mktemp -d /tmp/dsv3-serve-model.XXXXXX)
trap 'rm -rf "$tmp"' EXIT

for i in $(seq 1 40); do
  echo "The quick brown fox jumps over the lazy dog number $i. A tiny model writes tokens, one at"
  echo "a time, and then it stops when the sentence ends. Hello world, hello there! Serving many"
  echo "requests at once is called continuous batching; each step decodes one token for every"
  echo "running sequence. Prices: \$12.50, 7% off, 3 + 4 = 7. Ünïcödé wörds, naïve café, 東京, 🙂."
done > "$tmp/text.txt"

"$dsv3" tokenizer train --input "$tmp/text.txt" --out "$tmp/tokenizer.json" --vocab-size $vocab \
  --special "<｜begin▁of▁sentence｜>" "<｜end▁of▁sentence｜>" "<｜User｜>" "<｜Assistant｜>" >/dev/null

# The trainer stops early when no pair is frequent enough: take the size it reached.
size=$(python3 - "$tmp/tokenizer.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1], encoding="utf-8"))
ids = set(t["model"]["vocab"].values()) | {a["id"] for a in t.get("added_tokens", [])}
assert ids == set(range(len(ids))), "tokenizer ids are not 0..n-1"
print(len(ids))
PY
)

python3 - "$here/../../configs/tiny.json" "$tmp/config.json" "$size" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))["model"]
c["vocab_size"] = int(sys.argv[3])
c["num_hidden_layers"] = 2
c["bos_token_id"], c["eos_token_id"] = 0, 1
json.dump(c, open(sys.argv[2], "w"), indent=1)
PY

"$dsv3" init --config "$tmp/config.json" --out "$out" --format fp8 --seed 7 >/dev/null
cp "$tmp/tokenizer.json" "$out/tokenizer.json"
cat > "$out/tokenizer_config.json" <<'JSON'
{
  "add_bos_token": true,
  "add_eos_token": false,
  "bos_token": "<｜begin▁of▁sentence｜>",
  "eos_token": "<｜end▁of▁sentence｜>"
}
JSON
touch "$out/.complete"
echo "make_model.sh: $out (vocab $size, fp8)"
