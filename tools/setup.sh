#!/usr/bin/env bash
# Installs everything weavefast, its demo and its tests need on a fresh
# Debian 12 machine, then builds the Cython core in place. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "tools/setup.sh: run as root (it installs Debian packages): sudo $0" >&2
  exit 1
fi

# systemd: systemd-analyze checks the shipped units in the tests; libssl-dev: the core links libcrypto
packages=(iproute2 iputils-ping iperf3 ethtool tcpdump nftables procps busybox-static docker.io etcd-server systemd openssl make gcc libssl-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check "Cython==3.3.1" wheel "setuptools>=65"
python3 -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[test,bench]"
echo "weavefast: set-up done ($(python3 -c 'import dataplane, dataplane._core; print(dataplane.__version__)'))"
