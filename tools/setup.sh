#!/usr/bin/env bash
# Installs weavefast from this clone on a Debian 12 or 13 host that may have nothing but
# `make`: the Debian packages it, its demo and its tests need, then a virtual environment
# the project owns (WEAVEFAST_PREFIX, default /opt/weavefast) with the pinned PyPI
# releases of tools/constraints.txt and weavefast itself (editable: this clone stays its
# source, the Cython core is built in place), and `weavefast` linked into /usr/local/bin.
# Never touches the system Python. Run as root (no sudo needed in a root shell).
#
#   bash tools/setup.sh              install, or check that the install is current
#   bash tools/setup.sh --uninstall  remove the venv and the command (not the Debian packages)
#
# A second run with nothing changed installs nothing and takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${WEAVEFAST_PREFIX:-/opt/weavefast}
link=/usr/local/bin/weavefast

if [ "$(id -u)" != 0 ]; then
  echo "tools/setup.sh: run as root (it installs Debian packages and $prefix): sudo $0" >&2
  exit 1
fi

if [ "${1:-}" = --uninstall ]; then
  if [ "$(readlink "$link" 2>/dev/null)" = "$prefix/bin/weavefast" ]; then rm -f "$link"; fi
  rm -rf "$prefix"
  echo "weavefast: removed $prefix and $link; the Debian packages it installed stay" \
       "(apt-get purge them if nothing else uses them)"
  exit 0
fi

if dpkg-query -W -f='${Status}' weavefast 2>/dev/null | grep -q "install ok installed" &&
   [ "$prefix" = /opt/weavefast ]; then
  echo "tools/setup.sh: the weavefast .deb owns /opt/weavefast: 'apt-get purge weavefast' first," \
       "or install this clone elsewhere with WEAVEFAST_PREFIX=/opt/weavefast-dev" >&2
  exit 1
fi

# Run time: the router and the demo. Build: the venv and the Cython core (libcrypto).
# Tests: real dockerd, etcd, iperf3, captures, the container image's busybox, systemd-analyze.
runtime=(iproute2 iputils-ping procps util-linux ethtool nftables iptables kmod)
build=(python3 python3-venv python3-dev gcc libc6-dev libssl-dev ca-certificates make)
tests=(iperf3 tcpdump busybox-static docker.io etcd-server systemd openssl)
wanted=("${runtime[@]}" "${build[@]}" "${tests[@]}")
installed=$( (dpkg-query -W -f='${Package} ${Status}\n' "${wanted[@]}" 2>/dev/null || true) |
            awk '/install ok installed/ {print $1}')
missing=()
for p in "${wanted[@]}"; do
  grep -qx "$p" <<<"$installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "weavefast: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    >/tmp/weavefast-apt.log 2>&1 ||
    { tail -20 /tmp/weavefast-apt.log >&2; echo "tools/setup.sh: apt-get install failed" >&2; exit 1; }
fi

# Debian's interpreter, whatever else is first on PATH: the venv must outlive any pyenv.
python=/usr/bin/python3
stamp_file=$prefix/.setup-stamp
stamp=$( { echo "$PWD"; $python -VV; cat tools/constraints.txt pyproject.toml setup.py ext/*.pyx \
           ext/*.pxi ext/includes/*; } | sha256sum | cut -d' ' -f1)
if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ] &&
   (cd / && "$prefix/bin/python" -c "import dataplane._core") 2>/dev/null; then
  ln -sfn "$prefix/bin/weavefast" "$link"
  echo "weavefast: set-up is current ($prefix)"
  exit 0
fi

[ -x "$prefix/bin/python" ] || $python -m venv "$prefix"
pip=("$prefix/bin/python" -m pip install -q --disable-pip-version-check -c tools/constraints.txt)
"${pip[@]}" Cython setuptools wheel
"${pip[@]}" --no-build-isolation -e ".[test]"
ln -sfn "$prefix/bin/weavefast" "$link"
echo "$stamp" >"$stamp_file"
echo "weavefast: set-up done: $("$prefix/bin/weavefast" --version 2>/dev/null || true)" \
     "in $prefix, command $link"
