#!/usr/bin/env bash
# Installs everything Tessera needs to build, test and run, from Debian packages only.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
PKGS=(
  build-essential g++ cmake ninja-build pkg-config
  libgtest-dev libgmock-dev googletest libbenchmark-dev
  libopenblas-openmp-dev
  nlohmann-json3-dev libcli11-dev libpcre2-dev libcpp-httplib-dev curl chromium
  clang libclang-rt-14-dev
  fortunes-min fortunes
  openmpi-bin libopenmpi-dev
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
