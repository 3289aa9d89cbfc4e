"""Find what a run may have left behind: Mininet shells, our processes, links, bridges.

Used by the cleanup tests and `chaintwin doctor`-style checks; reads only.
"""

from __future__ import annotations

import subprocess


def _lines(argv: list[str]) -> list[str]:
    p = subprocess.run(argv, capture_output=True, text=True)
    return [line for line in p.stdout.splitlines() if line.strip()]


def find(node_names: list[str] | tuple[str, ...] = ()) -> list[str]:
    """Everything still present that a chaintwin run creates; empty when clean."""
    found = []
    for pattern in ("mininet:", "testbed[.]linkemu", "abn[.]shim"):
        found += [f"process: {line}" for line in _lines(["pgrep", "-af", pattern])]
    for tool in ("iperf3", "tcpdump"):
        found += [f"process: {line}" for line in _lines(["pgrep", "-ax", tool])]
    links = _lines(["ip", "-o", "link", "show"])
    for line in links:
        name = line.split(":", 2)[1].strip().split("@")[0]
        if any(name == n or name.startswith(f"{n}-eth") for n in node_names):
            found.append(f"link in root namespace: {name}")
    found += [f"network namespace: {ns}" for ns in _lines(["ip", "netns", "list"])
              if ns.startswith("ctprobe")]
    return found
