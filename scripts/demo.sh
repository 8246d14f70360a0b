#!/usr/bin/env bash
# The main job, as far as dsv3 goes today (training and generation arrive with the model
# issues): build; look at the real DeepSeek model configs; write a tiny DeepSeek-V3-shaped
# FP8 checkpoint in the Hugging Face layout, inspect it and convert it to BF16; tokenize
# with DeepSeek-V3's own tokenizer and train a small BPE of our own; measure the kernels
# beside OpenBLAS and the memory bandwidth (docs/PERF.md has the recorded figures).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"
bin=build/release
dsv3=$bin/dsv3
work=$(mktemp -d /tmp/dsv3-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$dsv3" --version

echo; echo "== The real models' configs (parameter counts, MLA cache, MoE layout)"
"$dsv3" inspect configs/deepseek-v3-671b.json
"$dsv3" inspect configs/moonlight-16b-a3b.json --json | python3 -c \
  'import json,sys; j=json.load(sys.stdin); print("moonlight-16b-a3b:", {k: j[k] for k in list(j)[:6]})'

echo; echo "== A tiny DeepSeek-V3-shaped checkpoint: FP8 128x128 blocks, 2 shards, MTP layer"
"$dsv3" init --config tiny-v3 --out "$work/tiny-fp8" --format fp8 --shards 2
"$dsv3" inspect "$work/tiny-fp8"
"$dsv3" convert --in "$work/tiny-fp8" --out "$work/tiny-bf16" --to bf16
"$dsv3" inspect "$work/tiny-bf16" --json | python3 -c \
  'import json,sys; j=json.load(sys.stdin); print("converted:", j.get("bytes_by_dtype", j.get("weights")))'

echo; echo "== DeepSeek-V3's tokenizer"
mkdir -p "$work/tok"
gzip -dc tests/data/tokenizer/deepseek_v3_tokenizer.json.gz > "$work/tok/tokenizer.json"
cp tests/data/tokenizer/deepseek_v3_tokenizer_config.json "$work/tok/tokenizer_config.json"
printf '"Hello, world! This is DeepSeek-V3."\n"深度求索 DeepSeek-V3 的分词器 🚀"\n' |
  "$dsv3" tokenize --tokenizer "$work/tok" --jsonl | tee "$work/ids.jsonl"
"$dsv3" detokenize --tokenizer "$work/tok" --jsonl < "$work/ids.jsonl"
echo '[{"role":"user","content":"What is MLA?"}]' |
  "$dsv3" tokenizer chat --tokenizer "$work/tok" --add-generation-prompt

echo; echo "== Training a 2000-token byte-level BPE on the licences in /usr/share/common-licenses"
cat /usr/share/common-licenses/* > "$work/corpus.txt"
"$dsv3" tokenizer train --vocab-size 2000 --input "$work/corpus.txt" --out "$work/bpe.json"
echo '"Permission is hereby granted, free of charge"' | "$dsv3" tokenize --tokenizer "$work/bpe.json" --jsonl

echo; echo "== GEMM, 2 threads: dsv3 vs OpenBLAS (F32), and dsv3 BF16 / FP8 block-scaled"
for shape in "2048 2048 2048" "512 7168 2048"; do
  set -- $shape
  "$dsv3" bench gemm --m $1 --n $2 --k $3 --dtype f32 --threads 2
  OPENBLAS_NUM_THREADS=2 "$bin"/bench_openblas $1 $2 $3 2 | python3 -c \
    'import json,sys; j=json.load(sys.stdin); print("openblas sgemm M=%d N=%d K=%d: %.1f GFLOP/s" % (j["m"], j["n"], j["k"], j["gflops"]))'
  "$dsv3" bench gemm --m $1 --n $2 --k $3 --dtype bf16 --threads 2
  "$dsv3" bench gemm --m $1 --n $2 --k $3 --dtype fp8 --threads 2
done
echo; echo "== Decode GEMV over FP8 weights vs the measured memory bandwidth"
"$dsv3" bench gemv --n 7168 --k 18432 --dtype fp8 --threads 2 --seconds 2
