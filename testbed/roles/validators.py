"""The chain's validators as a role: one `nodes` validator per listed host, on keys and
a genesis written for the run; ready once every one listens; supervised (a validator
that exits fails the run, unless the timeline crashed it); stopped with SIGTERM. The
timeline's `crash` SIGKILLs one, `restart` starts it again on its own ledger (its logs
go to node-v<i>.restart<k>.log). The manifest keeps `chain` (folder,
addresses, the validators' processes); the analysis checks the ledgers and writes the
latency and block tables and figure from the run folder only."""

from __future__ import annotations

import shlex
import signal
from pathlib import Path
from typing import Any

from testbed import chain as chain_mod
from testbed import processes
from testbed.errors import EmulationError
from testbed.experiment_schema import Command, Experiment
from testbed.roles import wrap_process
from testbed.topology_schema import Topology


class ValidatorsRole:
    name = "validators"
    manifest_key = "chain"

    def __init__(self, experiment: Experiment, run_dir: Path) -> None:
        self.experiment, self.run_dir = experiment, run_dir
        self.runtime: chain_mod.ChainRuntime | None = None
        self.running: dict[str, processes.Running] = {}
        self.earlier: list[processes.Running] = []
        """Incarnations ended by a `crash` (the manifest lists them too)."""
        self.net: Any = None
        self.wrappers: list[Any] = []
        """Roles started before this one (roles.build): their wrap_process shapes how the
        validators start (the ABN sender's cgroup)."""

    def start(self, net: Any) -> None:
        self.net = net
        self.runtime = chain_mod.prepare(self.experiment, net.plan, self.run_dir)
        logs = self.run_dir / "logs"
        logs.mkdir(exist_ok=True)
        for i, host in enumerate(self.runtime.spec.validators):
            argv = self.runtime.node_argv(i)
            spec = Command(name=f"node-v{i}", kind="command", host=host,
                           command=shlex.join(argv), required=True)
            self.running[spec.name] = processes.start(
                net.node(host), spec, wrap_process(self.wrappers, argv), logs, 0.0)

    def ready(self, timeout: float) -> None:
        assert self.runtime is not None
        port = self.runtime.spec.port
        for i, host in enumerate(self.runtime.spec.validators):
            if not processes.wait_listening(self.net.node(host), port, timeout=max(timeout, 30)):
                r = self.running[f"node-v{i}"]
                err = r.log_path.with_suffix(".stderr").read_text(errors="replace")[-500:]
                raise EmulationError(f"validator v{i} on {host} did not start listening on "
                                     f"port {port}: {err.strip()}")

    def _index(self, host: str) -> int:
        assert self.runtime is not None
        try:
            return self.runtime.spec.validators.index(host)
        except ValueError:
            raise EmulationError(f"{host} runs no validator") from None

    def crash(self, host: str) -> int:
        """SIGKILL the validator on `host` (as a power cut: no goodbye); its pid."""
        r = self.running[f"node-v{self._index(host)}"]
        if r.proc.poll() is not None:
            raise EmulationError(f"crash {host}: its validator is not running")
        r.stopped_by_us = True
        r.proc.send_signal(signal.SIGKILL)
        r.proc.wait(timeout=10)
        return r.proc.pid

    def restart(self, host: str) -> int:
        """Start the validator on `host` again, on its own ledger; its new pid."""
        assert self.runtime is not None
        i = self._index(host)
        name = f"node-v{i}"
        old = self.running[name]
        if old.proc.poll() is None:
            raise EmulationError(f"restart {host}: its validator is still running")
        self.earlier.append(old)
        k = sum(1 for r in self.earlier if r.spec.name.startswith(name))
        argv = self.runtime.node_argv(i)
        spec = Command(name=f"{name}.restart{k}", kind="command", host=host,
                       command=shlex.join(argv), required=True)
        self.running[name] = processes.start(self.net.node(host), spec,
                                             wrap_process(self.wrappers, argv),
                                             self.run_dir / "logs", 0.0)
        return self.running[name].proc.pid

    def check(self) -> None:
        """Raise ProcessFailed if a validator failed while the run goes on."""
        processes.check_exits(self.running)

    def stop(self) -> None:
        from testbed.network import _stop_process

        for r in self.running.values():
            if r.proc.poll() is None:
                r.stopped_by_us = True
                _stop_process(r.proc, sig=signal.SIGTERM)

    def collect(self) -> dict[str, Any]:
        if self.runtime is None:
            return {}
        return {"folder": "chain", "addresses": self.runtime.addresses,
                "processes": [r.summary() for r in [*self.earlier, *self.running.values()]]}


def build(topology: Topology, experiment: Experiment, run_dir: Path) -> list[ValidatorsRole]:
    return [ValidatorsRole(experiment, run_dir)] if experiment.chain is not None else []


def analyse(run_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """Ledger agreement (kept in the manifest's `chain`), the per-transaction and
    per-block tables and the latency figure."""
    if not manifest.get("chain"):
        return []
    from nodes.config import load_genesis
    from testbed import liveness, plots

    manifest["chain"]["ledger_check"] = chain_mod.ledger_check(run_dir / "chain")
    made = [run_dir / name for name in chain_mod.write_tables(run_dir, manifest)]
    timing = load_genesis(run_dir / "chain" / "genesis.yaml").timing
    manifest["chain"]["liveness"] = liveness.report(
        run_dir, manifest, timing.round_timeout, timing.round_backoff, timing.max_round_timeout)
    fig = plots.chain_latency_figure(run_dir, manifest)
    return made + ([fig] if fig is not None else [])
