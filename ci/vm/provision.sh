#!/usr/bin/env bash
# Provisioning of a Debian VM for chaintwin, shared by ci/vm-check.sh (inside its QEMU
# guest) and the Vagrantfile, so both VMs get the same things: the stock kernel's
# shaping modules loaded (sch_netem, fq: the netem backend), then the README's setup.sh.
#   ci/vm/provision.sh [PROJECT_DIR]        (as root, inside the VM; default: this checkout)
set -euo pipefail
cd "${1:-$(dirname "$0")/../..}"
log() { printf '[provision %s] %s\n' "$(date +%T)" "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "provision.sh: run as root" >&2; exit 1; }
# Debian's linux-image-amd64 ships these as modules. tc would autoload the qdiscs, but
# loading them here fails early, naming the kernel, where they are missing; tcp_bbr must
# be loaded: the runner accepts only congestion controls the kernel lists as available
# (tcp_available_congestion_control), and the quickstart's second flow is BBR.
for m in sch_netem sch_fq sch_htb tcp_bbr; do
  modprobe "$m" || { echo "provision.sh: kernel $(uname -r) has no module $m" >&2; exit 1; }
done
log "kernel $(uname -r): sch_netem, sch_fq, sch_htb, tcp_bbr loaded"
# And at every boot (the Vagrant VM reboots; the vm-check guest has no systemd to read it).
mkdir -p /etc/modules-load.d
printf '%s\n' sch_netem sch_fq sch_htb tcp_bbr > /etc/modules-load.d/chaintwin.conf
./setup.sh
