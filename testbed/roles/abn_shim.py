"""The ABN shim as a role: `abn: {...}` on a topology host runs `abn.shim` there.

The shim is told the governed link's interface, so only what leaves on it counts against
the capacity, only traffic crossing it is queued, and it can read that link's queue. It
installs its FORWARD rules itself (fail-open: --queue-bypass) and removes them when it
stops; the role starts it in the host's namespace, waits for it to bind its queue, stops
it with SIGTERM (it prints its counters) and keeps the counters and the per-period
records (`abn/<host>.jsonl`) for the manifest.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from testbed.experiment_schema import Experiment
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

    def argv(self, link_intf: str | None = None) -> list[str]:
        """The shim's command line; `link_intf` is the governed link's interface here."""
        s = self.spec
        extra = ["--link-intf", link_intf] if link_intf else []
        if link_intf and s.queue_drain:
            extra += ["--queue-drain", f"{s.queue_drain:g}"]
        if s.hints_port is not None:
            extra += ["--hints-port", str(s.hints_port)]
        if s.guaranteed:
            extra += ["--guaranteed", f"{s.guaranteed:g}"]
        if s.policy_path is not None:
            extra += ["--policy", s.policy_path]
        return [sys.executable, "-m", "abn.shim", "--queue", str(self.queue), *extra,
                "--capacity-bps", f"{s.capacity_bps:.0f}", "--period", f"{s.period:g}",
                "--allocator", s.allocator, "--idle", f"{s.idle:g}",
                "--max-flows", str(s.max_flows), "--records", str(self.records),
                "--iptables", "--no-control"]

    def start(self, net: Any) -> None:
        from testbed.network import _project_root, popen

        self.records.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "wb")
        try:
            intf = net.plan.intf(self.spec.link, self.host).name
            self.proc = popen(net.node(self.host), self.argv(intf), stdin=subprocess.DEVNULL,
                              stdout=out, stderr=subprocess.STDOUT, cwd=str(_project_root()))
        finally:
            out.close()

    def ready(self, timeout: float) -> None:
        from testbed.network import wait_ready

        wait_ready(self.proc, self.log, timeout, f"the ABN shim on {self.host}")

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


def build(topology: Topology, experiment: Experiment, run_dir: Path) -> list[AbnShimRole]:
    return [AbnShimRole(host, spec.abn, QUEUE_BASE + i, run_dir)
            for i, (host, spec) in enumerate(topology.hosts.items()) if spec.abn is not None]


def analyse(run_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """One figure per shim: each flow's notified rate and C_r over time, from the
    per-period records (abn/<host>.jsonl), shaded where the run was unreliable."""
    out = []
    t0 = manifest.get("timeline_t0_unix")
    for name, role in (manifest.get("roles") or {}).items():
        if not name.startswith("abn:"):
            continue
        path = run_dir / role["records"]
        if not path.exists() or t0 is None:
            continue
        fig = _rates_figure(path, role, t0, manifest, run_dir / f"abn_rates_{role['host']}.png")
        if fig is not None:
            out.append(fig)
    return out


def _rates_figure(path: Path, role: dict[str, Any], t0: float, manifest: dict[str, Any],
                  out: Path) -> Path | None:
    from testbed import plots  # matplotlib only when drawing

    plt = plots.plt
    recs = []
    for line in path.read_text().splitlines():
        try:
            recs.append(json.loads(line))
        except ValueError:
            continue  # a cut-off last line of a killed shim
    if not recs:
        return None
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in recs:
        t = r["t"] - t0
        for f in r["flows"]:
            src, sport, dst, dport = f["key"]
            xs, ys = series.setdefault(f"{src}:{sport} > {dst}:{dport}", ([], []))
            xs.append(t)
            ys.append(f["rate_bps"] / 1e6)
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=150)
    ax.plot([r["t"] - t0 for r in recs], [r["C_r_bps"] / 1e6 for r in recs], color="0.4",
            lw=1.0, ls="--", label="C_r (capacity left for TCP data)")
    markers = "o.x+1234"  # equal shares overlap exactly: different markers keep each visible
    for i, (label, (xs, ys)) in enumerate(sorted(series.items())):
        ax.plot(xs, ys, markers[i % len(markers)], ms=3, mfc="none", label=label)
    plots.mark_unreliable(ax, manifest)
    s = role.get("settings", {})
    ax.set_title(f"ABN shim on {role['host']}: notified rate per flow "
                 f"(C={s.get('capacity')}, T={s.get('period')} s, {s.get('allocator')})",
                 fontsize=9)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("rate (Mbit/s)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
