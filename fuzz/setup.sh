#!/usr/bin/env bash
# Installs what the fuzz targets and the ASan build need (after tools/setup.sh, which
# `make fuzz-setup` runs first): clang and its sanitizer/libFuzzer runtimes from Debian,
# and atheris (libFuzzer for Python, pinned in tools/constraints.txt) into weavefast's
# venv. Run as root; does nothing when all is there already.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-/opt/weavefast/bin/python}  # the venv tools/setup.sh made
"$PYTHON" -c "import cryptography, pytest, scapy" 2>/dev/null || {
  echo "fuzz/setup.sh: $PYTHON lacks the project's dependencies: run 'make setup' (as root) first" >&2
  exit 1
}
install_missing() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  if [ "$(id -u)" != 0 ]; then
    echo "fuzz/setup.sh: missing ${missing[*]}; run as root (it installs Debian packages)" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
install_missing clang libssl-dev
# clang's sanitizer and libFuzzer runtimes are packaged per major version (14 on Debian 12)
install_missing "libclang-rt-$(clang -dumpversion | cut -d. -f1)-dev"
"$PYTHON" -c "import atheris" 2>/dev/null ||
  "$PYTHON" -m pip install -q --disable-pip-version-check -c tools/constraints.txt atheris
