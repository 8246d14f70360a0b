#!/usr/bin/env bash
# Builds dsv3 and runs the whole test suite twice: the Release build, then the Debug
# build with AddressSanitizer + UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
JOBS=$(nproc)
for preset in release asan; do
  echo "== $preset: configure and build"
  cmake --preset "$preset" >/dev/null
  cmake --build --preset "$preset" -j "$JOBS"
  echo "== $preset: tests"
  ctest --preset "$preset" -j "$JOBS"
done
echo "dsv3: all tests passed"
