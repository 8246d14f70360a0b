#!/usr/bin/env bash
# Regenerates the trainer's test data: trains tests/data/tokenizer/trained_tokenizer.json
# with our trainer on train_corpus.txt, then has the Rust HF tokenizers encode the parity
# strings with it (trained_expected.jsonl). Usage: tools/tokenizer/gen_trained.sh path/to/dsv3
set -euo pipefail
DSV3=$(realpath "${1:?usage: gen_trained.sh path/to/dsv3}")
cd "$(dirname "$0")/../.."
D=tests/data/tokenizer
"$DSV3" tokenizer train --vocab-size 1000 --input $D/train_corpus.txt --out $D/trained_tokenizer.json
(cd tools/tokenizer && npm install --no-audit --no-fund --silent >/dev/null &&
 node gen_vectors.js ../../$D/parity_strings.jsonl ../../$D/trained_expected.jsonl ../../$D/trained_tokenizer.json)
