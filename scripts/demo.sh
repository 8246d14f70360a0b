#!/usr/bin/env bash
# The main job: build dsv3; assemble the demo corpus from Debian packages (English and
# Chinese fortunes, the C++ standard library headers) and train a BPE on it; train the
# default tiny DeepSeek-V3 (configs/tiny.json: MLA, 16 routed experts in 4 groups + 1 shared,
# a dense first layer, one MTP module) with the report's recipe for a few minutes; plot the
# curves; generate text from the trained checkpoint (plain and MTP-speculative) and score it;
# then look at the real models' configs and decode speed on a 1B DeepSeek-V3-shaped model.
# Last, it serves the trained checkpoint (dsv3 serve), sends two chat requests through the
# OpenAI API and prints the streamed answers, then a summary. --no-serve skips the server.
# Everything lands in runs/demo/ (gitignored).
set -euo pipefail
cd "$(dirname "$0")/.."
serve=1
for a in "$@"; do
  case "$a" in
    --no-serve) serve=0 ;;
    *) echo "usage: scripts/demo.sh [--no-serve]" >&2; exit 2 ;;
  esac
done
scripts/deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)" --target dsv3  # only what the demo runs, not the tests
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
echo "--- greedy, MTP speculative decoding (--speculative mtp) beside plain decoding, then --speculative auto (the default):"
spec_summary() {  # MODE: generate --compare --json on stdin -> the answer and one line on speculation
  python3 -c '
import json, sys
mode, d = sys.argv[1], json.loads(sys.stdin.read())
s, c = d["stats"]["speculation"], d["stats"]["compare"]
acc, tpv, chose, why = s["acceptance"], s["tokens_per_verify"], s["chose"], s["reason"]
sp, pl, x, same = (c["speculative_decode_tokens_per_s"], c["plain_decode_tokens_per_s"],
                   c["speedup"], c["same_ids"])
if mode == "mtp":
    print(d.get("text", ""))
    print(f"[mtp: acceptance {acc:.2f}, {tpv:.2f} tokens per verify step; {sp:.0f} tok/s vs plain "
          f"{pl:.0f}: {x:.2f}x; ids identical to plain: {same}]")
else:
    print(f"[auto: chose {chose}: {why}; ids identical to plain: {same}]")
' "$1"
}
"$dsv3" generate --model "$ckpt" --prompt "#include <vector>" --max-new-tokens 48 --speculative mtp --compare --json |
  tee "$out/speculative-mtp.json" | spec_summary mtp
"$dsv3" generate --model "$ckpt" --prompt "#include <vector>" --max-new-tokens 48 --compare --json |
  tee "$out/speculative-auto.json" | spec_summary auto
echo "(On this tiny model the weights of a step fit in the CPU's caches, so a verify step over 1 + d"
echo " positions costs nearly as much as 1 + d plain steps and the drafts cannot pay: auto decodes"
echo " plainly. Where a step streams its weights from memory they do: 1.5-1.9x on configs/mtp-bench.json,"
echo " 120 MB per step, in docs/PERF.md (bench/mtp_speculative.sh).)"
"$dsv3" score --model "$ckpt" --prompt "The quick brown fox jumps over the lazy dog." --mtp | tail -n 2

echo; echo "== The real models' configs (parameter counts, MLA cache, MoE layout)"
"$dsv3" inspect configs/deepseek-v3-671b.json

echo; echo "== Decode on a 1.09B-parameter DeepSeek-V3-shaped FP8 model (random weights) vs the bandwidth roofline"
"$dsv3" bench decode --config configs/bench-v3-1b.json --context 256 --steps 16 --json | tee "$out/decode.json"

if [[ $serve == 1 ]]; then
  echo; echo "== Serving $ckpt (OpenAI API, chat page)"
  "$dsv3" serve --model "$ckpt" --port 0 --served-model-name tiny > "$out/serve.log" 2>&1 &
  server=$!
  trap 'kill -TERM $server 2>/dev/null || true' EXIT
  url=""
  for _ in $(seq 240); do  # ≤ 120 s for the model to load
    url=$(sed -n 's/.*ready on \(http:[^ ]*\).*/\1/p' "$out/serve.log" | head -n 1)
    [[ -n $url ]] && break
    kill -0 $server 2>/dev/null || { cat "$out/serve.log" >&2; exit 1; }
    sleep 0.5
  done
  [[ -n $url ]] || { echo "dsv3 serve did not become ready; see $out/serve.log" >&2; exit 1; }
  # The corpus's chat.jsonl taught the model the chat format with three kinds of request
  # (scripts/corpus.sh): two of them, as a user would send them.
  chat() {  # QUESTION: one streamed chat completion, printed as it arrives
    echo "POST $url/v1/chat/completions (stream): \"$1\""
    echo "--- streamed answer:"
    python3 -c 'import json, sys; print(json.dumps({"model": "tiny", "stream": True, "max_tokens": 96,
        "temperature": 0.7, "seed": 1, "messages": [{"role": "user", "content": sys.argv[1]}]}))' "$1" |
      curl -sN --max-time 120 "$url/v1/chat/completions" -H 'Content-Type: application/json' -d @- |
      python3 -c '
import json, sys
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("data: ") or line == "data: [DONE]":
        continue
    chunk = json.loads(line[6:])
    if "error" in chunk:
        sys.exit("error from the server: " + chunk["error"].get("message", str(chunk["error"])))
    for c in chunk.get("choices", []):
        sys.stdout.write(c.get("delta", {}).get("content") or "")
        sys.stdout.flush()
print()'
  }
  chat "Tell me a fortune."
  chat "What does <vector> look like?"
  echo "---"
  grep "request" "$out/serve.log" | tail -n 1
  kill -TERM $server 2>/dev/null || true
  wait $server 2>/dev/null || true
  trap - EXIT
  echo "chat page: $url/ (the server has stopped; reopen it with: $dsv3 serve --model $ckpt --port 8080, then http://127.0.0.1:8080/)"
fi

echo; echo "== Summary"
python3 - "$out" "$ckpt" <<'PY'
import json, sys
out, ckpt = sys.argv[1], sys.argv[2]
rows = [json.loads(l) for l in open(f"{out}/tiny/metrics.jsonl") if l.strip()]
last = rows[-1]
tps = sorted(r["tokens_per_s"] for r in rows)[len(rows) // 2]
dec = json.load(open(f"{out}/decode.json"))
run = dec["runs"][0]
print(f"data:        data/corpus -> data/train ({last['tokens']:.0f} training tokens seen)")
print(f"model:       configs/tiny.json, checkpoint {ckpt}")
mtp = f", MTP module 1 {last['mtp_loss'][0]:.3f}" if last.get("mtp_loss") else ""
print(f"training:    {last['step']} steps, final loss {last['main_loss']:.3f}{mtp}, median {tps:.0f} tokens/s")
print(f"decode:      1.09B FP8 model at context {run['context']}: {run['tokens_per_s']:.1f} tokens/s = {100 * run['of_roofline']:.0f}% of the bandwidth roofline ({run['roofline_tps']:.1f})")
print(f"files:       metrics {out}/tiny/metrics.jsonl, curves {out}/tiny/curves.png, server log {out}/serve.log")
PY
