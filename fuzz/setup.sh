#!/usr/bin/env bash
# Installs what the fuzz targets and the ASan build need on a fresh Debian 12
# machine (after tools/setup.sh): clang and its sanitizer/libFuzzer runtimes,
# and atheris (libFuzzer for Python, from PyPI). Run as root; does nothing
# when all is there already.
set -euo pipefail
packages=(clang libclang-rt-14-dev libssl-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "fuzz/setup.sh: missing ${missing[*]}; run as root (it installs Debian packages)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -c "import atheris" 2>/dev/null ||
  python3 -m pip install -q --disable-pip-version-check "atheris>=2.3"
# The Python targets and make test-asan import the project's dependencies,
# which tools/setup.sh (make setup / make test) installs.
python3 -c "import cryptography, pytest, scapy" 2>/dev/null || {
  echo "fuzz/setup.sh: the project's Python dependencies are missing: run 'sudo make setup' first" >&2
  exit 1
}
