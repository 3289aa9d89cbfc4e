#!/usr/bin/env bash
# The README's commands in a real VM with Debian's stock kernel, which has sch_netem: the
# netem shaping backend proven, next to the userspace delay line this project's machines
# use (their kernels have no sch_netem).
#
# A Debian root is built with debootstrap (mirror found as ci/fresh-debian.sh finds it)
# with linux-image-amd64 and its modules, made into a disk image and cached; each run
# boots a throw-away overlay of it with QEMU (KVM where it works, else TCG), hands the
# guest a clean clone of this project (HEAD, committed files only) over 9p, and the
# guest (ci/vm/guest.sh) runs: ci/vm/provision.sh (shared with the Vagrantfile),
# `chaintwin doctor` (+ --json, which must say netem), the README's two commands (the
# test one as `--smoke`), ci/vm/accuracy.py and tests/emulation/test_shaping_accuracy.py.
# The emulation runs in the guest's kernel, not the host's.
#
#   ci/vm-check.sh                     (as root) build or reuse the image, run everything
#   ACCEL=kvm|tcg|auto (auto)          auto: KVM if /dev/kvm boots a kernel, else TCG
#   REQUIRE_KVM=1                      fail instead of falling back to TCG
#   STEPS="doctor accuracy"            a subset of the guest's steps (default all)
#   WORKTREE=1                         test the working tree's tracked files, not HEAD
#   REV=<commit>                       test that commit instead of HEAD
#   REBUILD=1                          rebuild the cached image
#   CACHE_DIR=/var/tmp/chaintwin-vm    image cache; results of the last run in $CACHE_DIR/last
#   VM_MEM=4096 VM_TIMEOUT=7200 (s)    guest memory, and the limit on the whole boot
#   VM_APPEND="..."                    more kernel parameters
#   PREINSTALL=1                       put setup.sh's apt packages and pip downloads in the
#                                      image (0: the guest's setup.sh installs them all)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${CACHE_DIR:-/var/tmp/chaintwin-vm}
suite=${SUITE:-bookworm}
accel=${ACCEL:-auto}
preinstall=${PREINSTALL:-1}
log() { printf '[vm-check %s] %s\n' "$(date +%T)" "$*"; }
die() { printf '[vm-check] FAILED: %s\n' "$*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "run as root (debootstrap, chroot and mounts need it)"
start=$(date +%s)

# --- cleanup: whatever we started or mounted goes, on exit, error or Ctrl-C -----------
qemu_pid= tail_pid= run= build_root=
mounted=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    log "stopping QEMU (pid $qemu_pid)"
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
  fi
  [ -z "$tail_pid" ] || kill "$tail_pid" 2>/dev/null || true
  for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  [ -z "$build_root" ] || rm -rf "$build_root"   # an unfinished image root
  if [ -n "$run" ] && [ "${KEEP_RUN:-0}" != 1 ]; then rm -rf "$run"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# --- host tools -------------------------------------------------------------------------
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" \
    >/dev/null || die "could not install ${need[*]} (QEMU is needed: apt-get install qemu-system-x86 qemu-utils)"
fi
command -v qemu-system-x86_64 >/dev/null || die "QEMU is missing (qemu-system-x86_64 not on PATH)"

# shellcheck source=ci/lib.sh
. "$here/ci/lib.sh"  # debian_mirror, chroot_mounts, copy_host_access (with fresh-debian.sh)
mirror=$(debian_mirror)
[ -n "$mirror" ] || die "cannot tell this machine's Debian mirror; set MIRROR="

# --- the image (cached) -----------------------------------------------------------------
# setup.sh's apt packages, read from setup.sh itself so the image follows it.
apt_pkgs=$(bash -c 'eval "$(sed -n "/^APT_PACKAGES=(/,/^)/p" "$1")"; echo "${APT_PACKAGES[@]}"' _ "$here/setup.sh")
[ -n "$apt_pkgs" ] || die "cannot read APT_PACKAGES from setup.sh"
key=$( { echo "v1 $suite $preinstall $apt_pkgs"; cat "$here/ci/vm/init.sh";
         [ "$preinstall" != 1 ] || cat "$here/pyproject.toml"; } | sha256sum | cut -c1-12)
img=$cache/image-$key
mkdir -p "$cache"

chroot_umount() {
  for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  mounted=()
}

build_image() {
  local t=$(date +%s) root
  build_root=$cache/build-root.$$
  root=$build_root
  rm -rf "$root"
  log "debootstrap $suite (minbase + linux-image-amd64) from $mirror"
  debootstrap --variant=minbase --include=linux-image-amd64,kmod,iproute2,ca-certificates \
    "$suite" "$root" "$mirror" > "$cache/debootstrap.log" 2>&1 \
    || die "debootstrap failed (see $cache/debootstrap.log)"
  copy_host_access "$root"
  if [ "$preinstall" = 1 ]; then
    # Saves the guest (slow under TCG) unpacking ~300 packages and downloading wheels;
    # its setup.sh then finds them present. No services start in the chroot.
    log "pre-installing setup.sh's apt packages and downloading the pip wheels (chroot)"
    chroot_mounts "$root"
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    # shellcheck disable=SC2086
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
      DEBIAN_FRONTEND=noninteractive /bin/bash -c "
        echo 'wireshark-common wireshark-common/install-setuid boolean false' | debconf-set-selections
        apt-get update -q && apt-get install -y -q --no-install-recommends $apt_pkgs && apt-get clean" \
      > "$cache/preinstall.log" 2>&1 || die "apt-get install in the image failed (see $cache/preinstall.log)"
    mkdir -p "$root/tmp/warm"
    cp "$here/pyproject.toml" "$root/tmp/warm/"
    # pip's HTTP cache (/root/.cache/pip) is what the guest's setup.sh then hits.
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
      PIP_CERT=/etc/ssl/certs/ca-certificates.crt /bin/bash -c '
        set -e; python3 -m venv /tmp/warm/venv; /tmp/warm/venv/bin/pip install -q --upgrade pip
        deps=$(python3 -c "import tomllib; p = tomllib.load(open(\"/tmp/warm/pyproject.toml\", \"rb\"))[\"project\"]; print(\" \".join(p[\"dependencies\"] + p[\"optional-dependencies\"][\"dev\"] + [\"setuptools>=68\", \"wheel\"]))")
        /tmp/warm/venv/bin/pip download -q -d /tmp/warm/dl $deps' \
      >> "$cache/preinstall.log" 2>&1 || die "pip download in the image failed (see $cache/preinstall.log)"
    rm -rf "$root/tmp/warm" "$root/usr/sbin/policy-rc.d"
    chroot_umount
  fi
  install -m 755 "$here/ci/vm/init.sh" "$root/sbin/ct-init"
  echo chaintwin-vm > "$root/etc/hostname"
  rm -rf "$img.tmp"; mkdir -p "$img.tmp"
  cp "$root"/boot/vmlinuz-* "$img.tmp/vmlinuz"
  cp "$root"/boot/initrd.img-* "$img.tmp/initrd.img"
  ls "$root/lib/modules" > "$img.tmp/kernel"
  find "$root/lib/modules" -name 'sch_netem.ko*' | grep -q . || die "the image's kernel has no sch_netem module"
  log "making the ext4 disk image ($(du -sh "$root" | cut -f1) of files)"
  truncate -s 24G "$img.tmp/disk.raw"   # sparse; the guest's venv and results need room
  mkfs.ext4 -q -F -L ctroot -d "$root" "$img.tmp/disk.raw" || die "mkfs.ext4 -d failed"
  rm -rf "$root"; build_root=
  find "$cache" -maxdepth 1 -name 'image-*' ! -name "image-$key*" -exec rm -rf {} +  # old keys
  rm -rf "$img"; mv "$img.tmp" "$img"
  log "image $img built in $(( $(date +%s) - t )) s (kernel $(cat "$img/kernel"))"
}
if [ "${REBUILD:-0}" = 1 ] || [ ! -f "$img/disk.raw" ]; then
  build_image
else
  log "cached image $img (kernel $(cat "$img/kernel"))"
fi

# --- accelerator --------------------------------------------------------------------------
# /dev/kvm can exist and still not run this kernel (see kvm_pvm below). So boot the
# kernel once without a root (it panics at once, and -no-reboot ends QEMU) and look for
# its banner on the serial port.
kvm_boots() {
  [ -r /dev/kvm ] && [ -w /dev/kvm ] || { kvm_why="/dev/kvm missing or not accessible"; return 1; }
  local out
  out=$(timeout 30 qemu-system-x86_64 -enable-kvm -cpu max -smp 1 -m 512 -display none \
        -monitor none -serial stdio -no-reboot -kernel "$img/vmlinuz" \
        -append 'console=ttyS0 panic=-1' </dev/null 2>&1 | tr -d '\r' | grep -a -m1 'Linux version' || true)
  [ -n "$out" ] && return 0
  kvm_why="/dev/kvm is present but a KVM guest printed nothing in 30 s"
  # PVM (kvm_pvm) runs guests without hardware virtualisation, but only kernels built
  # as PVM guests; Debian's stock kernel hangs right after its real-mode setup.
  [ ! -d /sys/module/kvm_pvm ] || kvm_why="$kvm_why (this host's KVM is kvm_pvm: it boots only PVM-enabled guest kernels)"
  return 1
}
kvm_why=
case $accel in
  kvm) kvm_boots || die "KVM requested but not working: $kvm_why" ;;
  tcg) ;;
  auto)
    if kvm_boots; then accel=kvm
    elif [ "${REQUIRE_KVM:-0}" = 1 ]; then die "KVM is missing: $kvm_why (REQUIRE_KVM=1)"
    else log "KVM unusable ($kvm_why): falling back to TCG, ~10x slower"; accel=tcg
    fi ;;
  *) die "ACCEL must be kvm, tcg or auto" ;;
esac
if [ "$accel" = kvm ]; then
  smp=$(( $(nproc) < 2 ? $(nproc) : 2 )); qemu_accel=(-enable-kvm -cpu max); nice=()
else
  # One vCPU under TCG, and niced: the emulator would take a whole host core per vCPU.
  smp=1; qemu_accel=(-accel tcg,thread=multi -cpu max); nice=(nice -n 10)
fi

# --- the run ------------------------------------------------------------------------------
run=$(mktemp -d "$cache/run.XXXXXX")
share=$run/share
mkdir -p "$share"
rev=${REV:-HEAD}
if [ "${WORKTREE:-0}" = 1 ]; then
  # A commit object of the tracked working tree, made without touching refs or the index.
  rev=$(git -C "$here" stash create 2>/dev/null || true); rev=${rev:-HEAD}
fi
git clone -q --no-hardlinks "$here" "$share/chaintwin"
git -C "$share/chaintwin" checkout -q "$(git -C "$here" rev-parse "$rev")"
cp -a "$here/ci/vm" "$share/vm"   # the harness comes from this checkout
awk '/^```/{f=!f; next} f && NF && !/^#/' "$here/README.md" | head -2 > "$share/readme_cmds"
echo "${STEPS:-all}" > "$share/steps"
log "project $(git -C "$share/chaintwin" rev-parse --short HEAD)$([ "$rev" = HEAD ] || echo " (not HEAD: $rev)"); README commands:"
sed 's/^/    /' "$share/readme_cmds"
qemu-img create -q -f qcow2 -F raw -b "$img/disk.raw" "$run/overlay.qcow2"

log "booting kernel $(cat "$img/kernel") under $accel: $smp vCPU, ${VM_MEM:-4096} MiB"
: > "$run/console.log"
# mitigations=off: a throw-away test guest; under TCG the page-table isolation costs a lot.
timeout -k 10 "${VM_TIMEOUT:-7200}" "${nice[@]}" qemu-system-x86_64 "${qemu_accel[@]}" \
  -smp "$smp" -m "${VM_MEM:-4096}" -display none -monitor none -no-reboot \
  -serial "file:$run/console.log" \
  -kernel "$img/vmlinuz" -initrd "$img/initrd.img" \
  -append "console=ttyS0 root=LABEL=ctroot rw quiet panic=1 net.ifnames=0 mitigations=off init=/sbin/ct-init ${VM_APPEND:-}" \
  -drive "file=$run/overlay.qcow2,if=virtio,format=qcow2,cache=unsafe" \
  -netdev user,id=n0,net=192.168.76.0/24,host=192.168.76.2,dns=192.168.76.3 \
  -device virtio-net-pci,netdev=n0 \
  -virtfs "local,path=$share,mount_tag=ctshare,security_model=none,id=ctshare" \
  </dev/null > "$run/qemu.log" 2>&1 &
qemu_pid=$!
tail -n +1 -f "$run/console.log" --pid "$qemu_pid" &
tail_pid=$!
qrc=0; wait "$qemu_pid" || qrc=$?
qemu_pid=
sleep 1; kill "$tail_pid" 2>/dev/null || true; tail_pid=
[ "$qrc" -ne 124 ] || die "the VM did not finish within VM_TIMEOUT=${VM_TIMEOUT:-7200} s"
[ "$qrc" -eq 0 ] || die "QEMU exited $qrc: $(tail -3 "$run/qemu.log")"

# --- results ------------------------------------------------------------------------------
rm -rf "$cache/last"; mkdir -p "$cache/last"
cp -a "$share/out/." "$run/console.log" "$cache/last/" 2>/dev/null || true
[ -f "$share/guest-exit" ] || die "the guest stopped before its steps ended (see $cache/last/console.log)"
grc=$(cat "$share/guest-exit")
log "guest steps (name, exit code, seconds):"
sed 's/^/    /' "$share/out/steps.tsv"
for f in accuracy accuracy-userspace; do
  [ -f "$share/out/$f.json" ] || continue
  log "$f.json:"
  python3 - "$share/out/$f.json" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    keep = ("backend", "avg_ms", "avg_after_first_ms", "first_ms", "loss", "wire_mbit",
            "utilisation", "steady_utilisation", "status", "pass", "error")
    print("    " + r["check"] + ": " + ", ".join(f"{k}={r[k]}" for k in keep if k in r))
PY
done
log "results in $cache/last; total $(( $(date +%s) - start )) s under $accel"
[ "$grc" -eq 0 ] || die "a guest step failed (exit $grc; see $cache/last/console.log)"
if [ "${STEPS:-all}" = all ]; then
  log "passed: the README's commands and the accuracy checks on the netem backend, kernel $(cat "$img/kernel")"
else
  log "passed: steps ${STEPS} only (not the whole check), kernel $(cat "$img/kernel")"
fi
