"""The ABN sender as a role: when a run's traffic uses the `abn` congestion control,
register it (BPF struct_ops), attach the option parser to a cgroup made for the run,
and start every process of the timeline inside that cgroup.

Everything it sets up is held by the loader's BPF links and the cgroup directory: `stop`
ends the loader (the kernel unregisters `abn` and detaches the parser) and removes the
cgroup, killing whatever is still in it. The loader's counters stream to
`abn/sender.jsonl`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from abn import sender
from testbed.errors import EmulationError
from testbed.experiment_schema import Experiment, Iperf3Client, SlimClient
from testbed.topology_schema import Topology


def uses_abn(experiment: Experiment) -> bool:
    """Whether any traffic selects `abn` (an iperf3 or slim client, the chain's validators,
    or a host's default)."""
    if any(isinstance(p, Iperf3Client | SlimClient) and p.congestion == "abn"
           for p in experiment.processes):
        return True
    if experiment.chain is not None and experiment.chain.congestion == "abn":
        return True
    return any(str(kv.get("net.ipv4.tcp_congestion_control", "")) == "abn"
               for kv in experiment.sysctls.values())


class AbnSenderRole:
    name = "abn_sender"

    def __init__(self, run_dir: Path) -> None:
        self.records = run_dir / "abn" / "sender.jsonl"
        self.cgroup: sender.SenderCgroup | None = None
        self.loader: sender.AbnSender | None = None

    def start(self, net: Any) -> None:
        self.records.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.cgroup = sender.SenderCgroup.create("senders")
            self.loader = sender.AbnSender(self.cgroup, self.records)
            self.loader.start()
        except (sender.SenderError, OSError) as exc:
            raise EmulationError(f"ABN sender: {exc}") from exc

    def ready(self, timeout: float) -> None:
        assert self.loader is not None
        try:
            self.loader.ready(timeout)
        except sender.SenderError as exc:
            raise EmulationError(f"ABN sender: {exc}") from exc

    def wrap_process(self, argv: list[str]) -> list[str]:
        """The process, started inside the senders' cgroup."""
        return self.cgroup.wrap(argv) if self.cgroup is not None else argv

    def stop(self) -> None:
        if self.loader is not None:
            self.loader.stop()
        if self.cgroup is not None:
            self.cgroup.remove()

    def collect(self) -> dict[str, Any]:
        return {"records": "abn/sender.jsonl",
                "cgroup": None if self.cgroup is None else str(self.cgroup.path),
                "counters": self.loader.counters() if self.loader is not None else {},
                "returncode": None if self.loader is None or self.loader.proc is None
                else self.loader.proc.returncode}


def build(topology: Topology, experiment: Experiment, run_dir: Path) -> list[AbnSenderRole]:
    return [AbnSenderRole(run_dir)] if uses_abn(experiment) else []


def analyse(run_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    return []
