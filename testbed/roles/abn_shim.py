"""The ABN shim as a role: `abn: {...}` on a topology host runs `abn.shim` there.

The shim installs its FORWARD rule itself (fail-open: --queue-bypass) and removes it when
it stops; the role starts it in the host's namespace, waits for it to bind its queue,
stops it with SIGTERM (it prints its counters) and keeps the counters and the per-period
records (`abn/<host>.jsonl`) for the manifest.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from testbed.errors import EmulationError
from testbed.topology_schema import AbnSpec, Topology

QUEUE_BASE = 1000
"""Shim queues are numbered from here, clear of the delay lines' (1, 2, ... per host)."""


class AbnShimRole:
    def __init__(self, host: str, spec: AbnSpec, queue: int, run_dir: Path) -> None:
        self.name = f"abn:{host}"
        self.host, self.spec, self.queue = host, spec, queue
        folder = run_dir / "abn"
        self.records = folder / f"{host}.jsonl"
        self.log = folder / f"{host}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        s = self.spec
        return [sys.executable, "-m", "abn.shim", "--queue", str(self.queue),
                "--capacity-bps", f"{s.capacity_bps:.0f}", "--period", f"{s.period:g}",
                "--allocator", s.allocator, "--idle", f"{s.idle:g}",
                "--max-flows", str(s.max_flows), "--records", str(self.records),
                "--iptables", "--no-control"]

    def start(self, net: Any) -> None:
        from testbed.network import _project_root, popen

        self.records.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "wb")
        try:
            self.proc = popen(net.node(self.host), self.argv(), stdin=subprocess.DEVNULL,
                              stdout=out, stderr=subprocess.STDOUT, cwd=str(_project_root()))
        finally:
            out.close()

    def ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while b"ready" not in self.log.read_bytes():
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise EmulationError(f"the ABN shim on {self.host} did not start: "
                                     f"{self.log.read_text(errors='replace')[-500:]}")
            time.sleep(0.02)

    def stop(self) -> None:
        from testbed.network import _stop_process

        if self.proc is not None and self.proc.poll() is None:
            _stop_process(self.proc, sig=signal.SIGTERM)

    def collect(self) -> dict[str, Any]:
        out: dict[str, Any] = {"host": self.host, "queue": self.queue,
                               "settings": self.spec.model_dump(), "log": f"abn/{self.log.name}",
                               "records": f"abn/{self.records.name}",
                               "returncode": None if self.proc is None else self.proc.returncode}
        lines = self.log.read_text(errors="replace").strip().splitlines() if (
            self.log.exists()) else []
        try:
            out["counters"] = json.loads(lines[-1]) if lines else None
        except ValueError:
            out["counters"] = None
        if self.records.exists():
            out["periods"] = sum(1 for _ in self.records.open())
        return out


def build(topology: Topology, run_dir: Path) -> list[AbnShimRole]:
    return [AbnShimRole(host, spec.abn, QUEUE_BASE + i, run_dir)
            for i, (host, spec) in enumerate(topology.hosts.items()) if spec.abn is not None]
