"""What this machine can emulate: `chaintwin doctor`, and the backend choice.

Kernel features are probed for real: a throw-away network namespace with a veth pair
gets an HTB, a netem and an NFQUEUE rule; whatever the kernel refuses is absent. The
probe namespace is removed whatever happens.
"""

from __future__ import annotations

import ctypes.util
import os
import platform
import shutil
import subprocess
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ABN_CC = "abn congestion control"
"""The check that says whether the BPF `abn` congestion control can be registered here."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    fix: str = ""
    required: bool = True
    """Emulation cannot run without it."""


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    shaping_backend: str | None = None
    congestion_controls: list[str] = field(default_factory=list)
    kernel: str = platform.release()

    @property
    def can_emulate(self) -> bool:
        return all(c.ok for c in self.checks if c.required)

    def get(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kernel": self.kernel,
            "can_emulate": self.can_emulate,
            "shaping_backend": self.shaping_backend,
            "congestion_controls": self.congestion_controls,
            "checks": [asdict(c) for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Report:
        return cls(checks=[Check(**c) for c in data["checks"]],
                   shaping_backend=data["shaping_backend"],
                   congestion_controls=list(data["congestion_controls"]), kernel=data["kernel"])

    def render(self) -> str:
        lines = [f"kernel {self.kernel}"]
        for c in self.checks:
            mark = "ok " if c.ok else ("MISSING" if c.required else "no ")
            lines.append(f"  [{mark:>7}] {c.name}: {c.detail}")
            if not c.ok and c.fix:
                lines.append(f"            fix: {c.fix}")
        lines.append(f"congestion controls: {', '.join(self.congestion_controls) or '?'}")
        lines.append(f"link shaping backend: {self.shaping_backend or 'none (cannot shape)'}")
        lines.append("emulation: " + ("ready" if self.can_emulate else "CANNOT RUN (see above)"))
        return "\n".join(lines)


def _run(argv: list[str], timeout: float = 10) -> tuple[bool, str]:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return p.returncode == 0, (p.stderr or p.stdout).strip()


def _probe_kernel() -> dict[str, tuple[bool, str]]:
    ns = f"ctprobe{uuid.uuid4().hex[:6]}"
    res: dict[str, tuple[bool, str]] = {}
    ok, msg = _run(["ip", "netns", "add", ns])
    if not ok:
        return {"netns": (False, msg)}
    res["netns"] = (True, "")
    try:
        def nsrun(*argv: str) -> tuple[bool, str]:
            # nsenter, not `ip netns exec`: the latter remounts / and /sys, which fails
            # where / is not a mount point (chroots, some containers).
            return _run(["nsenter", f"--net=/run/netns/{ns}", *argv])

        ok, msg = nsrun("ip", "link", "add", "pa", "type", "veth", "peer", "name", "pb")
        res["veth"] = (ok, msg)
        if ok:
            nsrun("ip", "link", "set", "pa", "up")
            res["htb"] = nsrun("tc", "qdisc", "add", "dev", "pa", "root", "handle", "1:",
                               "htb", "default", "1")
            res["netem"] = nsrun("tc", "qdisc", "add", "dev", "pb", "root", "netem",
                                 "delay", "1ms")
        res["nfqueue"] = nsrun("iptables", "-w", "-t", "mangle", "-A", "POSTROUTING",
                               "-o", "pa", "-j", "NFQUEUE", "--queue-num", "7",
                               "--queue-bypass")
    finally:
        _run(["ip", "netns", "del", ns])
    return res


def congestion_controls() -> list[str]:
    p = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")
    return p.read_text().split() if p.exists() else []


def _bridge_netfilter_check(root: bool) -> Check:
    """With br_netfilter, frames crossing Linux bridges pass the root namespace's
    iptables FORWARD chain: a DROP policy there (Docker sets one) silently cuts every
    switch of an emulated network. We do not change that machine-wide setting."""
    flag = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if not flag.exists() or flag.read_text().strip() != "1":
        return Check("bridged traffic", True, "not filtered by the root namespace's iptables",
                     required=False)
    policy = "unknown (needs root)"
    if root:
        ok, out = _run(["iptables", "-w", "-S", "FORWARD"])
        policy = next((line.split()[-1] for line in out.splitlines()
                       if line.startswith("-P FORWARD")), "unknown") if ok else "unknown"
    fine = policy == "ACCEPT"
    return Check("bridged traffic", fine,
                 f"br_netfilter on; root FORWARD policy {policy}"
                 + ("" if fine else ": bridged links may drop everything"),
                 "iptables -I FORWARD -m physdev --physdev-is-bridged -j ACCEPT "
                 "(or sysctl net.bridge.bridge-nf-call-iptables=0)", required=False)


def _abn_cc_check(root: bool) -> Check:
    """The ABN sender needs BPF struct_ops (a congestion control in BPF); probed by really
    registering it and unregistering it again."""
    from abn import sender

    fix = ("./setup.sh (builds abn/bpf: needs clang, llvm, bpftool, libbpf-dev) on a kernel "
           "with BTF and struct_ops links (Linux >= 6.4)")
    if not root:
        return Check(ABN_CC, False, "not probed (needs root)", fix, required=False)
    ok, detail = sender.probe()
    return Check(ABN_CC, ok, detail, fix, required=False)


def compiled_loop() -> tuple[bool, str]:
    """Whether the compiled NFQUEUE loop imports; there is no slower fallback."""
    try:
        from abn import _nfqloop
    except ImportError as exc:
        return False, f"abn._nfqloop does not import ({exc}); no userspace delay line"
    return True, _nfqloop.__file__ or "abn._nfqloop"


def probe() -> Report:
    r = Report()
    root = os.geteuid() == 0
    r.checks.append(Check("root", root, "running as root" if root else "not root",
                          "run as root (sudo): namespaces and qdiscs need it"))
    try:
        import mininet.net  # noqa: F401
        from mininet.nodelib import LinuxBridge  # noqa: F401

        mn_ok, mn_detail = True, "importable (Debian package)"
    except ImportError as exc:
        mn_ok, mn_detail = False, f"not importable: {exc}"
    r.checks.append(Check("mininet", mn_ok, mn_detail,
                          "apt-get install mininet, and use the .venv made by setup.sh"))
    mnexec = shutil.which("mnexec")
    r.checks.append(Check("mnexec", bool(mnexec), mnexec or "not on PATH",
                          "apt-get install mininet (PyPI's mininet has no mnexec)"))
    for tool, pkg, required in [("tc", "iproute2", True), ("ip", "iproute2", True),
                                ("iptables", "iptables", True), ("brctl", "bridge-utils", True),
                                ("iperf3", "iperf3", True), ("tcpdump", "tcpdump", True),
                                ("tshark", "tshark", False), ("ping", "iputils-ping", False),
                                ("ethtool", "ethtool", False)]:
        path = shutil.which(tool)
        r.checks.append(Check(tool, bool(path), path or "not on PATH",
                              f"apt-get install {pkg}", required))
    nfq_lib = ctypes.util.find_library("netfilter_queue")
    r.checks.append(Check("libnetfilter_queue", bool(nfq_lib), nfq_lib or "not found",
                          "apt-get install libnetfilter-queue1", required=False))
    loop_ok, loop_detail = compiled_loop()
    r.checks.append(Check("compiled delay line", loop_ok, loop_detail,
                          "./setup.sh (builds abn/_nfqloop.c: needs gcc, python3-dev, "
                          "libnetfilter-queue-dev, libmnl-dev)", required=False))
    ovs = shutil.which("ovs-vsctl")
    r.checks.append(Check("openvswitch", bool(ovs),
                          (ovs + " (userspace datapath only)") if ovs else "not installed",
                          "apt-get install openvswitch-switch", required=False))
    r.congestion_controls = congestion_controls()
    kern: dict[str, tuple[bool, str]] = _probe_kernel() if root and shutil.which("ip") else {}
    for feat, required, fix in [
        ("netns", True, "kernel needs network namespaces"),
        ("veth", True, "kernel needs veth"),
        ("htb", True, "kernel needs sch_htb"),
        ("netem", False, "without sch_netem the userspace delay line is used"),
        ("nfqueue", False, "kernel needs NFQUEUE (xt_NFQUEUE) for the userspace delay line"),
    ]:
        if feat in kern:
            ok, msg = kern[feat]
            r.checks.append(Check(f"kernel:{feat}", ok, "yes" if ok else f"no ({msg[:80]})",
                                  fix, required))
        else:
            r.checks.append(Check(f"kernel:{feat}", False, "not probed (needs root)", fix,
                                  required))
    r.checks.append(_bridge_netfilter_check(root))
    r.checks.append(_abn_cc_check(root))
    netem = kern.get("netem", (False, ""))[0]
    userspace = kern.get("nfqueue", (False, ""))[0] and bool(nfq_lib) and loop_ok
    r.shaping_backend = "netem" if netem else "userspace" if userspace else None
    r.checks.append(Check("delay/jitter/loss backend", r.shaping_backend is not None,
                          r.shaping_backend or "neither netem nor NFQUEUE with the compiled "
                          "delay line",
                          "run ./setup.sh (compiled delay line), or use a kernel with sch_netem"))
    return r
