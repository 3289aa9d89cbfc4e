"""Find what a run may have left behind: Mininet shells, our processes, links, bridges.

Used by the cleanup tests and `chaintwin doctor`-style checks; reads only.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def _lines(argv: list[str]) -> list[str]:
    p = subprocess.run(argv, capture_output=True, text=True)
    return [line for line in p.stdout.splitlines() if line.strip()]


def find(node_names: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Everything still present that a chaintwin run creates; empty when clean."""
    found = []
    for pattern in ("mininet:", "testbed[.]linkemu", "abn[.]shim"):
        found += [f"process: {line}" for line in _lines(["pgrep", "-af", pattern])]
    for tool in ("iperf3", "tcpdump", "abn_loader"):
        found += [f"process: {line}" for line in _lines(["pgrep", "-ax", tool])]
    links = _lines(["ip", "-o", "link", "show"])
    for line in links:
        name = line.split(":", 2)[1].strip().split("@")[0]
        if any(name == n or name.startswith(f"{n}-eth") for n in node_names):
            found.append(f"link in root namespace: {name}")
    found += [f"network namespace: {ns}" for ns in _lines(["ip", "netns", "list"])
              if ns.startswith("ctprobe")]
    cc = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")
    if cc.exists() and "abn" in cc.read_text().split():
        found.append("congestion control still registered: abn")
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[2] == "cgroup2":
            found += [f"cgroup: {d}" for d in Path(parts[1]).glob("chaintwin-*")]
    return found
