#!/usr/bin/env bash
# Builds a fuzzer with clang (libFuzzer + ASan + UBSan) from just the sources it needs and
# runs it. Usage: [FUZZ_TARGET=safetensors|config|openai_api] scripts/fuzz.sh [seconds] [libFuzzer args]
# The seed corpus is fuzz/corpus/<target> (committed); new inputs go to
# build/fuzz/corpus-<target> so the committed one stays small.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
shift || true
target=${FUZZ_TARGET:-safetensors}
out=build/fuzz
mkdir -p "$out/corpus-$target"
CXX=${CXX:-clang++}
libs=""
case "$target" in
  safetensors) srcs="src/io/safetensors_parse.cpp src/io/json_strict.cpp src/core/dtype.cpp src/core/check.cpp" ;;
  config) srcs="src/model/config.cpp src/io/file_util.cpp src/io/json_strict.cpp src/core/dtype.cpp src/core/check.cpp" ;;
  openai_api)
    srcs="src/serve/openai_api.cpp $(ls src/tokenizer/*.cpp) src/io/file_util.cpp src/io/json_strict.cpp src/core/check.cpp"
    # The real DeepSeek-V3 tokenizer, unpacked once for the target (DSV3_FUZZ_TOKENIZER).
    mkdir -p "$out/tokenizer"
    [[ -s $out/tokenizer/tokenizer.json ]] ||
      gunzip -c tests/data/tokenizer/deepseek_v3_tokenizer.json.gz > "$out/tokenizer/tokenizer.json"
    cp tests/data/tokenizer/deepseek_v3_tokenizer_config.json "$out/tokenizer/tokenizer_config.json"
    export DSV3_FUZZ_TOKENIZER=$out/tokenizer
    libs="-lpcre2-8" ;;
  *) echo "unknown FUZZ_TARGET $target" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086
"$CXX" -std=c++20 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
  -Isrc "fuzz/fuzz_$target.cpp" $srcs -o "$out/fuzz_$target" $libs
# Inputs up to 4 KiB: the parsers' limits (100 MB headers) are tested in tests/, not here.
dict=()
[[ -f fuzz/$target.dict ]] && dict=(-dict="fuzz/$target.dict")
"$out/fuzz_$target" "$out/corpus-$target" "fuzz/corpus/$target" -max_total_time="$secs" \
  -max_len=4096 -timeout=10 -print_final_stats=1 "${dict[@]}" "$@"
