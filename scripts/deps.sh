#!/usr/bin/env bash
# Installs the Debian packages dsv3 builds and tests with (we run as root on Debian 12).
# Skips apt when everything is already there, so repeated runs are fast.
set -euo pipefail
PKGS=(build-essential cmake pkg-config libcli11-dev nlohmann-json3-dev libpcre2-dev
      libgtest-dev libopenblas-dev python3 python3-torch python3-numpy clang
      libclang-rt-14-dev gnuplot-nox libcpp-httplib-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "dsv3: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}"
fi
