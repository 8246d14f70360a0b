#!/usr/bin/env bash
# The main job: build dsv3; assemble the demo corpus from Debian packages (English and
# Chinese fortunes, the C++ standard library headers) and train a BPE on it; train the
# default tiny DeepSeek-V3 (configs/tiny.json: MLA, 16 routed experts in 4 groups + 1 shared,
# a dense first layer, one MTP module) with the report's recipe for a few minutes; plot the
# curves; generate text from the trained checkpoint (plain and MTP-speculative) and score it;
# then look at the real models' configs and decode speed on a 1B DeepSeek-V3-shaped model.
# Everything lands in runs/demo/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
dsv3=build/release/dsv3
out=runs/demo
mkdir -p "$out"
"$dsv3" --version

echo; echo "== Demo corpus and tokenizer"
scripts/corpus.sh data/corpus
[[ -f data/tokenizer/tokenizer.json ]] || scripts/tokenizer.sh data/corpus data/tokenizer 4096
rm -rf data/train
"$dsv3" data prepare --tokenizer data/tokenizer --input data/corpus --out data/train

echo; echo "== Training configs/tiny.json (bf16, MTP, aux-loss-free balancing) into $out/tiny"
rm -rf "$out/tiny"
"$dsv3" train --config configs/tiny.json --data data/train --out "$out/tiny"
ckpt="$out/tiny/$(cat "$out/tiny/latest")"
if [[ -x scripts/plot_training.sh ]]; then
  scripts/plot_training.sh "$out/tiny/metrics.jsonl" "$out/tiny/curves.png" && echo "curves: $out/tiny/curves.png"
fi

echo; echo "== Generating from $ckpt"
for p in "int main(" "The secret of life is" "人生"; do
  echo "--- prompt: $p"
  "$dsv3" generate --model "$ckpt" --prompt "$p" --max-new-tokens 48 --temperature 0.8 --top-p 0.95 --seed 1
  echo
done
echo "--- greedy, MTP speculative decoding beside plain decoding (identical ids; acceptance, speedup):"
"$dsv3" generate --model "$ckpt" --prompt "#include <vector>" --max-new-tokens 48 --speculative mtp --compare --json
echo "--- the same under --speculative auto (the default: drafts only where it pays on this machine; stats.speculation says why):"
"$dsv3" generate --model "$ckpt" --prompt "#include <vector>" --max-new-tokens 48 --compare --json
"$dsv3" score --model "$ckpt" --prompt "The quick brown fox jumps over the lazy dog." --mtp | tail -n 2

echo; echo "== The real models' configs (parameter counts, MLA cache, MoE layout)"
"$dsv3" inspect configs/deepseek-v3-671b.json

echo; echo "== Decode on a 1.09B-parameter DeepSeek-V3-shaped FP8 model (random weights) vs the bandwidth roofline"
"$dsv3" bench decode --config configs/bench-v3-1b.json --context 256 --steps 16
