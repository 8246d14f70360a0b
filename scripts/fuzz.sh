#!/usr/bin/env bash
# Builds the safetensors header fuzzer with clang (libFuzzer + ASan + UBSan) from just the
# sources it needs and runs it. Usage: scripts/fuzz.sh [seconds] [extra libFuzzer args]
# The seed corpus is fuzz/corpus/safetensors (committed); new inputs go to
# build/fuzz/corpus so the committed one stays small.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
shift || true
out=build/fuzz
mkdir -p "$out/corpus"
CXX=${CXX:-clang++}
"$CXX" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Isrc fuzz/fuzz_safetensors.cpp src/io/safetensors_parse.cpp src/io/json_strict.cpp \
  src/core/dtype.cpp src/core/check.cpp -o "$out/fuzz_safetensors"
# -rss_limit: headers are capped at 100 MB; keep the fuzzer's inputs small.
"$out/fuzz_safetensors" "$out/corpus" fuzz/corpus/safetensors -max_total_time="$secs" \
  -max_len=4096 -timeout=10 -print_final_stats=1 "$@"
