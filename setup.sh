#!/usr/bin/env bash
# Idempotent set-up for chaintwin on Debian/Ubuntu, run as root.
#   1. apt packages (only the missing ones; no apt-get update when nothing is missing)
#   2. .venv made from Debian's /usr/bin/python3 with --system-site-packages, so that
#      Debian's mininet (which has mnexec; PyPI's has not) is importable
#   3. the project installed editable, redone only when pyproject.toml changes
# A second run changes nothing and takes about a second.
set -euo pipefail
cd "$(dirname "$0")"
say() { printf '[setup] %s\n' "$*"; }

APT_PACKAGES=(
  mininet iperf3 tcpdump tshark iptables bridge-utils ethtool iputils-ping iproute2
  procps psmisc libnetfilter-queue1 libnetfilter-queue-dev openvswitch-switch
  python3 python3-venv python3-dev gcc
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup.sh: run as root (it installs apt packages; emulation needs root too)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no without a prompt.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "apt packages present"
fi

VENV=.venv
if ! "$VENV/bin/python" -c "import mininet.net" 2>/dev/null; then
  say "creating $VENV from /usr/bin/python3 (sees Debian's mininet)"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi

stamp="$VENV/.chaintwin-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  say "installing chaintwin and its Python dependencies into $VENV"
  "$VENV/bin/python" -m pip install -q -e ".[dev]"
  echo "$want" > "$stamp"
else
  say "python environment up to date"
fi
say "ready: $VENV/bin/chaintwin"
