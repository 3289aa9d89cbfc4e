"""Packet captures as a role: one tcpdump per captured interface, started before any
other role so it sees everything, ready once each says it is listening, stopped with
SIGINT (it flushes its buffer) after every other role is gone. The manifest keeps the
list under `captures` (what the analysis and `chaintwin report` read)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from testbed.errors import EmulationError
from testbed.experiment_schema import Experiment
from testbed.topology_schema import Topology


class CapturesRole:
    name = "captures"
    manifest_key = "captures"

    def __init__(self, experiment: Experiment, run_dir: Path) -> None:
        self.experiment, self.run_dir = experiment, run_dir
        self.logs = run_dir / "logs"
        self.running: list[tuple[dict[str, Any], subprocess.Popen[bytes]]] = []

    def start(self, net: Any) -> None:
        from testbed.network import popen

        self.logs.mkdir(exist_ok=True)
        for cap in self.experiment.captures:
            intfs = [cap.intf] if cap.intf else [x.name for x in net.plan.intfs_of(cap.host)]
            for intf in intfs:
                fname = f"capture_{cap.host}_{intf}.pcap"
                log_name = f"tcpdump_{cap.host}_{intf}.log"
                argv = ["tcpdump", "-n", "-i", intf, "-s", str(cap.snaplen), "-w",
                        str(self.run_dir / fname), *cap.filter.split()]
                err = open(self.logs / log_name, "wb")
                try:
                    proc = popen(net.node(cap.host), argv, stdin=subprocess.DEVNULL,
                                 stdout=err, stderr=err)
                finally:
                    err.close()
                self.running.append(({"name": f"{cap.host}:{intf}", "file": fname,
                                      "log": log_name, "argv": argv}, proc))

    def ready(self, timeout: float) -> None:
        deadline = time.monotonic() + min(timeout, 5.0)
        for cap, proc in self.running:
            path = self.logs / cap["log"]
            while b"listening on" not in path.read_bytes():
                if proc.poll() is not None:
                    raise EmulationError(f"tcpdump on {cap['name']} failed: "
                                         f"{path.read_text(errors='replace').strip()}")
                if time.monotonic() > deadline:
                    break  # it may still be starting; the capture will say what it got
                time.sleep(0.02)

    def stop(self) -> None:
        import signal

        from testbed.network import _stop_process

        for _, proc in self.running:
            _stop_process(proc, sig=signal.SIGINT)

    def collect(self) -> list[dict[str, Any]]:
        return [c for c, _ in self.running]


def build(topology: Topology, experiment: Experiment, run_dir: Path) -> list[CapturesRole]:
    return [CapturesRole(experiment, run_dir)] if experiment.captures else []


def analyse(run_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    return []  # throughput.csv needs the flow names the runner's analysis knows
