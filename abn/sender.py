"""The ABN sender: load the BPF `abn` congestion control and its option parser, and give
senders a cgroup to run in.

The BPF side (abn/bpf/abn.bpf.c) is built by setup.sh into abn/bpf/build/. Its loader
(abn_loader) holds both attachments as BPF links: when it exits, however it exits, the
kernel unregisters `abn` and detaches the parser. This module starts and stops it,
makes and removes the cgroup, and reads the loader's counters.

The option parser runs only for sockets made by processes inside the cgroup; the
congestion control is global (any socket may select `abn`), and a socket that never
sees a rate behaves as Reno.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BPF_DIR = Path(__file__).resolve().parent / "bpf"
BUILD = BPF_DIR / "build"
OBJECT = BUILD / "abn.bpf.o"
LOADER = BUILD / "abn_loader"
BTF = Path("/sys/kernel/btf/vmlinux")
CC_LIST = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")
PRIVATE_CGROUP2 = Path("/run/chaintwin/cgroup2")

COUNTERS = ("sockets_enabled", "acks_with_rate", "acks_bad_length", "acks_no_option",
            "rate_changes", "storage_full", "cc_init", "cc_paced", "cc_fallback")
"""The loader's counters, in the order of abn.bpf.c's enum abn_counter."""


class SenderError(RuntimeError):
    """The ABN sender cannot be set up; the message says what is missing and the fix."""


def built() -> tuple[bool, str]:
    """Whether the BPF object and loader exist (setup.sh builds them)."""
    missing = [p.name for p in (OBJECT, LOADER) if not p.exists()]
    if missing:
        return False, (f"{', '.join(missing)} not built in {BUILD} (./setup.sh builds them: "
                       "needs clang, llvm, bpftool, libbpf-dev)")
    return True, str(BUILD)


def probe(timeout: float = 10.0) -> tuple[bool, str]:
    """Register `abn` and unregister it again: the kernel's real answer on struct_ops.

    If `abn` is already registered (a run is going on) that is an answer too."""
    ok, why = built()
    if not ok:
        return False, why
    if not BTF.exists():
        return False, f"the kernel exposes no BTF ({BTF}); struct_ops needs CONFIG_DEBUG_INFO_BTF"
    if registered():
        return True, "abn registered (in use by a run)"
    try:
        p = subprocess.run([str(LOADER), str(OBJECT), "--probe"], capture_output=True,
                           text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"abn_loader --probe: {exc}"
    if p.returncode != 0:
        lines = [ln for ln in (p.stderr or p.stdout).strip().splitlines() if ln.strip()]
        return False, "the kernel refused the abn congestion control: " + (
            lines[-1] if lines else f"exit {p.returncode}")
    return True, "BPF struct_ops congestion control registers and unregisters"


def registered() -> bool:
    return CC_LIST.exists() and "abn" in CC_LIST.read_text().split()


def cgroup2_mount() -> Path | None:
    """Where the unified (v2) cgroup hierarchy is mounted, if it is."""
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            return Path(parts[1])
    return None


@dataclass
class SenderCgroup:
    """A cgroup v2 directory for one run's senders; removed with everything in it."""

    path: Path
    mounted_by_us: Path | None = None

    @classmethod
    def create(cls, tag: str) -> SenderCgroup:
        root, mounted = cgroup2_mount(), None
        if root is None:  # a cgroup v1-only machine: mount a private v2 hierarchy
            PRIVATE_CGROUP2.mkdir(parents=True, exist_ok=True)
            p = subprocess.run(["mount", "-t", "cgroup2", "none", str(PRIVATE_CGROUP2)],
                               capture_output=True, text=True)
            if p.returncode != 0:
                raise SenderError(f"no cgroup v2 hierarchy and mounting one failed: "
                                  f"{p.stderr.strip()}")
            root = mounted = PRIVATE_CGROUP2
        path = root / f"chaintwin-{tag}-{uuid.uuid4().hex[:6]}"
        path.mkdir()
        return cls(path, mounted)

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def wrap(self, argv: list[str]) -> list[str]:
        """argv, started inside this cgroup (before it makes any socket)."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.procs), *argv]

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in self.procs.read_text().split()]
        except OSError:
            return []

    def remove(self) -> None:
        """Kill what is left in it, remove it (and a hierarchy we mounted)."""
        if self.path.exists():
            kill = self.path / "cgroup.kill"
            for _ in range(50):
                left = self.pids()
                if not left:
                    break
                if kill.exists():
                    kill.write_text("1")
                else:
                    for pid in left:
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                time.sleep(0.02)
            try:
                self.path.rmdir()
            except OSError:
                pass
        if self.mounted_by_us is not None:
            subprocess.run(["umount", str(self.mounted_by_us)], capture_output=True)
            self.mounted_by_us = None


class AbnSender:
    """The loader process for one run: `abn` registered, the parser on `cgroup`.

    Its JSON lines (ready, stats every `interval`, final) stream to `records`."""

    def __init__(self, cgroup: SenderCgroup, records: Path, interval: float = 1.0) -> None:
        self.cgroup, self.records, self.interval = cgroup, records, interval
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        ok, why = built()
        if not ok:
            raise SenderError(why)
        if registered():
            raise SenderError("a congestion control named abn is already registered "
                              "(another run, or a leftover: `bpftool struct_ops list`)")
        out = open(self.records, "wb")
        err = open(self.records.with_suffix(".stderr"), "wb")
        try:  # stdin is a pipe kept open: its end tells the loader we are gone
            self.proc = subprocess.Popen(
                [str(LOADER), str(OBJECT), "--cgroup", str(self.cgroup.path),
                 "--interval", f"{self.interval:g}"],
                stdin=subprocess.PIPE, stdout=out, stderr=err, start_new_session=True)
        finally:
            out.close()
            err.close()

    def ready(self, timeout: float = 10.0) -> None:
        assert self.proc is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(r.get("event") == "ready" for r in self.lines()):
                if registered():
                    return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        err = self.records.with_suffix(".stderr")
        tail = err.read_text(errors="replace").strip()[-400:] if err.exists() else ""
        self.stop()
        raise SenderError(f"abn_loader did not become ready: {tail or 'no message'}")

    def lines(self) -> list[dict[str, Any]]:
        if not self.records.exists():
            return []
        out = []
        for line in self.records.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line still being written
        return out

    def counters(self) -> dict[str, int]:
        """The latest counters (the final ones once stopped)."""
        recs = [r for r in self.lines() if r.get("event") in ("stats", "final")]
        return {k: int(recs[-1].get(k, 0)) for k in COUNTERS} if recs else {}

    def stop(self, grace: float = 5.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
