#!/usr/bin/env bash
# Idempotent set-up for chaintwin on Debian/Ubuntu, run as root.
#   1. apt packages (only the missing ones; no apt-get update when nothing is missing)
#   2. .venv made from Debian's /usr/bin/python3 with --system-site-packages, so that
#      Debian's mininet (which has mnexec; PyPI's has not) is importable
#   3. the project installed editable, redone only when pyproject.toml, setup.py or the C
#      source of the compiled NFQUEUE loop (abn/_nfqloop.c) change
#   4. a check that the compiled loop imports; if it does not, fail naming what is missing
#   5. the ABN sender (abn/bpf: a BPF congestion control and its loader), built against
#      this kernel's BTF; a kernel without BTF, or whose BTF has no struct_ops links
#      (Linux < 6.4), gets a warning (ABN runs then refuse to start, and `chaintwin
#      doctor` says why), a failed build an error
#   6. the tcp_bbr module loaded where BBR is a module not yet loaded (stock kernels)
# A second run changes nothing and takes about a second.
set -euo pipefail
cd "$(dirname "$0")"
say() { printf '[setup] %s\n' "$*"; }

APT_PACKAGES=(
  mininet iperf3 tcpdump tshark iptables bridge-utils ethtool iputils-ping iproute2
  procps psmisc libnetfilter-queue1 libnetfilter-queue-dev libmnl-dev openvswitch-switch
  python3 python3-venv python3-dev gcc make clang llvm bpftool libbpf-dev
)
# What the compiled NFQUEUE loop (abn/_nfqloop.c) is built from: package -> a file it ships
# (@PYTHON_INCLUDE@ is Python's include directory, asked once python3 is installed: a bare
# Debian root has no python3 before the apt step).
BUILD_NEEDS=(
  "gcc:/usr/bin/gcc"
  "python3-dev:@PYTHON_INCLUDE@/Python.h"
  "libnetfilter-queue-dev:/usr/include/libnetfilter_queue/libnetfilter_queue.h"
  "libmnl-dev:/usr/include/libmnl/libmnl.h"
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

build_missing() {
  local need pkg file out=() inc
  inc=$(/usr/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])' \
        2>/dev/null || echo /usr/include/python3)
  for need in "${BUILD_NEEDS[@]}"; do
    pkg=${need%%:*}; file=${need#*:}; file=${file/@PYTHON_INCLUDE@/$inc}
    [ -e "$file" ] || out+=("$pkg (no $file)")
  done
  echo "${out[*]}"
}

stamp="$VENV/.chaintwin-installed"
want=$(cat pyproject.toml setup.py abn/_nfqloop.c | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] \
    || ! "$VENV/bin/python" -c "import abn._nfqloop" 2>/dev/null; then
  miss=$(build_missing)
  if [ -n "$miss" ]; then
    echo "setup.sh: cannot build the compiled NFQUEUE loop (abn/_nfqloop.c): missing $miss;" \
         "apt-get install them and run ./setup.sh again" >&2
    exit 1
  fi
  say "installing chaintwin (with its compiled NFQUEUE loop) and its Python dependencies"
  rm -f abn/_nfqloop*.so
  if ! "$VENV/bin/python" -m pip install -q -e ".[dev]"; then
    echo "setup.sh: installing chaintwin failed (see pip's output above)" >&2
    exit 1
  fi
  echo "$want" > "$stamp"
else
  say "python environment up to date"
fi
if ! err=$("$VENV/bin/python" -c "import abn._nfqloop" 2>&1); then
  echo "setup.sh: the compiled NFQUEUE loop abn._nfqloop does not import: $err" >&2
  echo "setup.sh: it needs ${BUILD_NEEDS[*]%%:*}; rebuild with: rm $stamp; ./setup.sh" >&2
  exit 1
fi

bpf_stamp=abn/bpf/build/.stamp
bpf_want=$( (cat abn/bpf/abn.bpf.c abn/bpf/abn_loader.c abn/bpf/Makefile; uname -r) | sha256sum | cut -d' ' -f1)
if [ ! -e /sys/kernel/btf/vmlinux ]; then
  say "WARNING: this kernel has no BTF (/sys/kernel/btf/vmlinux): the abn congestion control" \
      "cannot be built or loaded here; ABN experiments will refuse to start"
elif [ ! -f "$bpf_stamp" ] || [ "$(cat "$bpf_stamp")" != "$bpf_want" ] \
    && ! bpftool btf dump file /sys/kernel/btf/vmlinux format c 2>/dev/null | grep -c 'BPF_F_LINK = ' >/dev/null; then
  # Linux < 6.4 (Debian 12's stock 6.1): BTF, but no struct_ops links to register with.
  say "WARNING: this kernel's BTF has no struct_ops links (Linux < 6.4): the abn congestion" \
      "control cannot be built or loaded here; ABN experiments will refuse to start"
elif [ ! -f "$bpf_stamp" ] || [ "$(cat "$bpf_stamp")" != "$bpf_want" ]; then
  say "building the ABN sender (abn/bpf: BPF congestion control and loader)"
  if ! make -s -C abn/bpf >/dev/null; then
    echo "setup.sh: building abn/bpf failed (clang, bpftool and libbpf-dev are needed;" \
         "see the compiler's output above)" >&2
    exit 1
  fi
  echo "$bpf_want" > "$bpf_stamp"
else
  say "ABN sender (abn/bpf) up to date"
fi
# A stock kernel ships BBR as a module that nothing has loaded yet, and the runner accepts
# only congestion controls the kernel lists as available (the quickstart's second flow is
# BBR). Kernels with BBR built in, or without loadable modules, need nothing here.
if ! grep -qw bbr /proc/sys/net/ipv4/tcp_available_congestion_control 2>/dev/null; then
  modprobe -q tcp_bbr 2>/dev/null && say "loaded the tcp_bbr module" \
    || say "WARNING: no BBR in this kernel: experiments with a BBR flow will refuse to start"
fi
say "ready: $VENV/bin/chaintwin"
