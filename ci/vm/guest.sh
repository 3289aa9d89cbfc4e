#!/usr/bin/env bash
# The vm-check work inside the QEMU guest (run by ci/vm/init.sh from the host's 9p share
# /mnt/share: chaintwin/ = a clean clone, vm/ = this folder, out/ = results for the host).
# Steps: timer (wake-up lateness), provision (vm/provision.sh), doctor (+ --json: must
# report netem), the README's two commands (the second as `chaintwin test --smoke`), the
# accuracy check, the netem backend's accuracy tests, then the accuracy check again with
# sch_netem made unloadable (doctor must then say userspace): both backends on one
# kernel. Each step's exit code and seconds go to out/steps.tsv.
set -uo pipefail  # not -e: every step runs and is recorded
share=/mnt/share
out=$share/out
mkdir -p "$out"
log() { printf '[vm-guest %s] %s\n' "$(date +%T)" "$*"; }
steps=${CT_STEPS:-$(cat "$share/steps" 2>/dev/null || echo all)}
want() { [ "$steps" = all ] || [[ " $steps " == *" $1 "* ]]; }
failed=0
step() {  # step NAME CMD...: run, time and record one step
  local name=$1 t rc; shift
  want "$name" || { log "step $name skipped"; return 0; }
  t=$(date +%s); log "step $name: $*"
  "$@"; rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$(( $(date +%s) - t ))" >> "$out/steps.tsv"
  log "step $name exited $rc after $(( $(date +%s) - t )) s"
  [ "$rc" -eq 0 ] || failed=1
}
: > "$out/steps.tsv"
log "kernel $(uname -r); $(nproc) CPU; $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB"
uname -a > "$out/uname.txt"
rm -rf /root/chaintwin
cp -a "$share/chaintwin" /root/chaintwin  # local ext4: venv, SQLite ledgers, results
cd /root/chaintwin || exit 1
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1
[ -f /etc/ssl/certs/ca-certificates.crt ] && export PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
  REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt

doctor() {
  .venv/bin/chaintwin doctor | tee "$out/doctor.txt"
  .venv/bin/chaintwin doctor --json > "$out/doctor.json" || true
  cat "$out/doctor.json"
  # The acceptance check: on this kernel (sch_netem present) the backend must be netem.
  .venv/bin/python - "$out/doctor.json" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1]))
netem = next(c for c in rep["checks"] if c["name"] == "kernel:netem")
print(f"doctor: kernel {rep['kernel']}, backend {rep['shaping_backend']}, "
      f"kernel:netem {netem['ok']}, can_emulate {rep['can_emulate']}")
sys.exit(0 if rep["shaping_backend"] == "netem" and netem["ok"] and rep["can_emulate"] else 1)
PY
}
readme() {  # readme N: the README's Nth command (the test one as the smoke subset)
  local cmd
  cmd=$(sed -n "${1}p" "$share/readme_cmds")
  [[ "$cmd" == *"chaintwin test" ]] && cmd="$cmd --smoke"
  log "README command $1: $cmd"
  bash -c "$cmd" 2>&1 | tail -40
  return "${PIPESTATUS[0]}"
}

timer() {  # how late a sleep wakes up in the guest (TCG and a busy host delay wake-ups)
  dmesg | grep -i -E 'clocksource|tsc:|lapic|hpet|clockevent' | tail -12
  python3 -c 'import time
d = []
for _ in range(20):
    t = time.monotonic(); time.sleep(0.1); d.append(time.monotonic() - t)
d.sort(); print(f"timer: time.sleep(0.1) took median {d[10] * 1e3:.2f} ms, min {d[0] * 1e3:.2f} ms")'
}
step timer timer
step provision bash "$share/vm/provision.sh" /root/chaintwin
step doctor doctor
step readme1 readme 1
step readme2 readme 2
step accuracy .venv/bin/python "$share/vm/accuracy.py" --json "$out/accuracy.json" \
  --jitter-seconds "${CT_JITTER_SECONDS:-20}" --jitter-rates "${CT_JITTER_RATES:-100,200}"
step netem-tests .venv/bin/chaintwin test tests/emulation/test_shaping_accuracy.py -q

userspace() {  # the same checks on the userspace delay line, same kernel and machine
  echo 'install sch_netem /bin/false' > /etc/modprobe.d/ct-no-netem.conf
  rmmod sch_netem || return 1
  .venv/bin/chaintwin doctor --json > "$out/doctor-userspace.json" || true
  .venv/bin/python -c 'import json, sys; r = json.load(open(sys.argv[1]));
print("doctor without sch_netem: backend", r["shaping_backend"]);
sys.exit(r["shaping_backend"] != "userspace")' "$out/doctor-userspace.json" || return 1
  # For comparison only: its pass/fail is in the JSON, not this step's exit code.
  .venv/bin/python "$share/vm/accuracy.py" --json "$out/accuracy-userspace.json" \
    --jitter-seconds "${CT_JITTER_SECONDS:-20}" --jitter-rates "${CT_JITTER_RATES:-100,200}" \
    || log "userspace line accuracy: some checks outside the bounds (see accuracy-userspace.json)"
  rm -f /etc/modprobe.d/ct-no-netem.conf; modprobe sch_netem
}
step userspace userspace
# The runs' folders for the host (manifests, CSVs, figures, logs; not the pcaps).
mkdir -p "$out/results"
(cd /root/chaintwin && tar --exclude='*.pcap' -cf - results 2>/dev/null) | tar -xf - -C "$out"
log "done; steps:"; cat "$out/steps.tsv"
exit "$failed"
