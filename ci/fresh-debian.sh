#!/usr/bin/env bash
# The honest check that the README works on a fresh machine: build a minimal Debian
# root with debootstrap, copy a clean clone of this project (HEAD, committed files only)
# into it, and run the README's two commands inside it as root (chroot with /proc,
# /sys, /dev mounted, and unmounted again whatever happens).
#
#   ci/fresh-debian.sh [TARGET_DIR]        (as root; default /var/tmp/chaintwin-fresh)
#   KEEP_ROOT=1 ci/fresh-debian.sh         reuse an existing root (not a fresh check)
#
# The Debian mirror and the pip index are the ones this machine's apt and pip already
# use (read from its configuration), so nothing else is reached. The host's kernel runs
# the emulation: run no other Mininet meanwhile.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
target=${1:-/var/tmp/chaintwin-fresh}
suite=${SUITE:-bookworm}
log() { printf '[fresh-debian %s] %s\n' "$(date +%T)" "$*"; }
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }

# shellcheck source=ci/lib.sh
. "$here/ci/lib.sh"
mirror=$(debian_mirror)
[ -n "$mirror" ] || { echo "cannot tell this machine's Debian mirror; set MIRROR=" >&2; exit 1; }

mounted=()
unmount_under() {  # everything mounted at or below $1, deepest first
  findmnt -rn -o TARGET | awk -v t="$1" 'index($0, t) == 1' | sort -r \
    | while read -r m; do umount -l "$m" 2>/dev/null || true; done
}
cleanup() {
  for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  unmount_under "$target"  # e.g. /run/netns, which `ip netns add` mounts inside the root
}
trap cleanup EXIT INT TERM

start=$(date +%s)
if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap"
  apt-get install -y -q debootstrap >/dev/null
fi
# A new root every time (KEEP_ROOT=1 reuses one, to iterate on the script itself).
if [ "${KEEP_ROOT:-0}" != 1 ] || [ ! -x "$target/usr/bin/apt-get" ]; then
  log "debootstrap $suite (minbase) into $target"
  unmount_under "$target"
  rm -rf "$target"
  debootstrap --variant=minbase "$suite" "$target" "$mirror" >/dev/null
fi
log "root ready after $(( $(date +%s) - start )) s; $(chroot "$target" dpkg-query -W | wc -l) packages"

# The root must be a mount point, as on a machine (`ip netns exec` remounts it).
mount --bind "$target" "$target"
mounted+=("$target")
chroot_mounts "$target"
mkdir -p "$target/run/netns" "$target/var/run"
cp /etc/resolv.conf "$target/etc/resolv.conf"
copy_host_access "$target"

rm -rf "$target/root/chaintwin"
git clone -q --no-hardlinks "$here" "$target/root/chaintwin"
before=$(chroot "$target" dpkg-query -W | wc -l)

readme_cmds=$(awk '/^```/{f=!f; next} f && NF && !/^#/' "$here/README.md" | head -2)
log "README commands:"; printf '    %s\n' "$readme_cmds"
n=0
while IFS= read -r cmd; do
  n=$((n + 1)); t=$(date +%s)
  log "command $n: $cmd"
  chroot "$target" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb \
    ${PIP_CERT:+PIP_CERT=$PIP_CERT} ${REQUESTS_CA_BUNDLE:+REQUESTS_CA_BUNDLE=$REQUESTS_CA_BUNDLE} \
    ${SSL_CERT_FILE:+SSL_CERT_FILE=$SSL_CERT_FILE} \
    /bin/bash -c "cd /root/chaintwin && $cmd" 2>&1 | tail -25
  rc=${PIPESTATUS[0]}
  log "command $n exited $rc after $(( $(date +%s) - t )) s"
  [ "$rc" -eq 0 ] || exit "$rc"
done <<< "$readme_cmds"
after=$(chroot "$target" dpkg-query -W | wc -l)
log "both README commands passed in a bare $suite root; apt packages $before -> $after; total $(( $(date +%s) - start )) s"
