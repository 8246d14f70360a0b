#!/usr/bin/env bash
# scripts/tokenizer.sh [CORPUS_DIR] [OUT_DIR] [VOCAB_SIZE]
#   defaults: data/corpus (from scripts/corpus.sh), data/tokenizer, 4096 (23 s here; 8192: 38 s)
#
# Trains the demo byte-level BPE on the corpus's text with `dsv3 tokenizer train` and
# DeepSeek-V3's special tokens at ids 0..6: BOS, EOS, the three FIM tokens (loader.h) and
# the chat roles. Writes OUT_DIR/tokenizer.json and a tokenizer_config.json naming BOS/EOS
# with add_bos_token true as DeepSeek-V3's has (for prompts; `dsv3 data prepare` never adds
# BOS: documents are packed with EOS separators).
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-data/corpus}
out=${2:-data/tokenizer}
vocab=${3:-4096}
dsv3=${DSV3:-build/release/dsv3}
[[ -x $dsv3 ]] || { echo "build dsv3 first (cmake --preset release && cmake --build build/release)"; exit 1; }
mkdir -p "$out"
text=$(mktemp /tmp/dsv3-tok-text.XXXXXX)
trap 'rm -f "$text"' EXIT
# The documents' text, one after another (the trainer pre-tokenizes, so the joins do not
# matter); JSONL escapes undone.
python3 -c '
import json, sys
with open(sys.argv[1], "w", encoding="utf-8") as out:
    for path in sys.argv[2:]:
        for line in open(path, encoding="utf-8"):
            j = json.loads(line)
            if "text" in j:  # chat.jsonl's conversations repeat these texts: left out
                out.write(j["text"] + "\n")
' "$text" "$corpus"/*.jsonl
"$dsv3" tokenizer train --vocab-size "$vocab" --input "$text" --out "$out/tokenizer.json" \
  --special "<｜begin▁of▁sentence｜>" "<｜end▁of▁sentence｜>" \
            "<｜fim▁begin｜>" "<｜fim▁hole｜>" "<｜fim▁end｜>" "<｜User｜>" "<｜Assistant｜>"
cat > "$out/tokenizer_config.json" <<'JSON'
{
  "add_bos_token": true,
  "add_eos_token": false,
  "bos_token": "<｜begin▁of▁sentence｜>",
  "eos_token": "<｜end▁of▁sentence｜>"
}
JSON
