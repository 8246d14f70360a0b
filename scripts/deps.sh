#!/usr/bin/env bash
# Installs the Debian packages dsv3 builds and tests with (we run as root on Debian 12).
# Skips apt when everything is already there, so repeated runs are fast. Then the pinned npm
# packages of the `dsv3 serve` tests (tests/serve/package-lock.json), unless installed.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libcli11-dev nlohmann-json3-dev libpcre2-dev
      libgtest-dev libopenblas-dev python3 python3-torch python3-numpy clang
      libclang-rt-14-dev gnuplot-nox libcpp-httplib-dev libopenmpi-dev openmpi-bin
      nodejs npm chromium chromium-driver python3-selenium)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# A Node.js from elsewhere (e.g. NodeSource's nodejs, which bundles npm and conflicts with
# Debian's npm package) is used as it is.
if command -v node >/dev/null && command -v npm >/dev/null; then
  missing=($(printf '%s\n' ${missing[@]+"${missing[@]}"} | grep -vx -e nodejs -e npm || true))
fi
if ((${#missing[@]})); then
  echo "dsv3: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi

# npm ci only when node_modules is missing or older than the lock file (npm writes
# node_modules/.package-lock.json on every install).
serve=$(cd "$(dirname "$0")/../tests/serve" && pwd)
if [[ ! -f $serve/node_modules/.package-lock.json || $serve/package-lock.json -nt $serve/node_modules/.package-lock.json ]]; then
  echo "dsv3: npm ci in tests/serve"
  npm ci --prefix "$serve" --no-audit --no-fund --loglevel=error
fi
