"""`chaintwin run`: build the network, run the timeline, collect, analyse, always tear down.

Run folders are `results/<experiment>/<experiment>__<variant>__<seed>__<timestamp>/`.
manifest.json is written at the start (status 'running') and rewritten at the end, so a
crashed run still says what it was.
"""

from __future__ import annotations

import heapq
import logging
import signal
import subprocess
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from testbed import (
    analysis,
    capabilities,
    cc_compare,
    faults,
    health,
    jobs,
    manifest,
    plots,
    processes,
    roles,
    slim_compare,
)
from testbed import chain as chain_mod
from testbed.config import PROJECT_ROOT, LoadedExperiment
from testbed.errors import EmulationError
from testbed.experiment_schema import (
    FAULT_EVENTS,
    HostState,
    Iperf3Client,
    LinkState,
    ProcessControl,
    SetLink,
    SlimClient,
    SwitchProtocol,
)
from testbed.network import Network, _stop_process, popen
from testbed.progress import Progress
from testbed.shaping import Backend
from testbed.topology_schema import Shaping

log = logging.getLogger("chaintwin.run")

COMPARISONS = (cc_compare.analyse, slim_compare.analyse)
"""Analyses that apply to a run by what it contains (scheme windows, slim clients); each
takes (run_dir, manifest) and returns what it wrote, [] when it does not apply."""
DEFAULT_RESULTS = PROJECT_ROOT / "results"


def make_run_dir(results: Path, name: str, variant: str, seed: int) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = results / name / f"{name}__{variant}__{seed}__{stamp}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}-{n}")
    run_dir.mkdir(parents=True)
    return run_dir


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt, so `finally` blocks tear down."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ignore SIGINT/SIGTERM while tearing down, so cleanup is not cut short."""
    old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def run(loaded: LoadedExperiment, results: Path = DEFAULT_RESULTS,
        show_progress: bool = True) -> Path:
    exp = loaded.experiment
    run_dir = make_run_dir(results, exp.name, exp.variant, exp.seed)
    man: dict[str, Any] = {
        "experiment": exp.model_dump(mode="json"),
        "experiment_file": str(loaded.path),
        "overrides": list(loaded.overrides),
        "run_id": run_dir.name,
        "seed": exp.seed,
        "mode": exp.mode,
        "status": "running",
        "started_at": manifest.now_iso(),
        "git": manifest.git_state(),
        "versions": manifest.versions(),
    }
    man["capabilities"] = capabilities.probe().to_dict()
    manifest.write(run_dir, man)
    try:
        if exp.mode == "simulation":
            _run_simulation(loaded, run_dir, man, show_progress)
        else:
            _run_emulation(loaded, run_dir, man, show_progress)
        # the data are kept either way; the status says whether to trust them
        unreliable = man.get("health", {}).get("status") == "unreliable"
        stalled = [st for st in (man.get("chain") or {}).get("liveness", {}).get("stalls", [])
                   if not st.get("expected")]
        # degraded: the chain stopped while transactions waited (listed in the manifest)
        man["status"] = "degraded" if stalled else "unreliable" if unreliable else "ok"
    except KeyboardInterrupt as exc:
        man["status"] = "interrupted"
        man["error"] = f"interrupted ({exc or 'SIGINT'})"
        raise
    except BaseException as exc:
        man["status"] = "failed"
        man["error"] = f"{type(exc).__name__}: {exc}"
        man["traceback"] = traceback.format_exc()
        raise
    finally:
        man["ended_at"] = manifest.now_iso()
        manifest.write(run_dir, man)
    return run_dir


def _run_simulation(loaded: LoadedExperiment, run_dir: Path, man: dict[str, Any],
                    show_progress: bool) -> None:
    exp = loaded.experiment
    assert exp.simulation is not None
    spec = jobs.get(exp.simulation.job)
    params = jobs.validate_params(exp, str(loaded.path))
    man["simulation"] = {"job": exp.simulation.job, "params": params.model_dump(mode="json")}
    manifest.write(run_dir, man)
    prog = Progress(exp.name, 1.0)

    def progress(frac: float, msg: str) -> None:
        if show_progress:
            prog.update(frac, msg)

    with interrupts_raise():
        jobs.resolve(spec.run)(params, jobs.JobContext(run_dir=run_dir, seed=exp.seed,
                                                        progress=progress))
    if show_progress:
        prog.done()
    man["artifacts"] = sorted(p.name for p in run_dir.iterdir() if p.name != "manifest.json")


def _run_emulation(loaded: LoadedExperiment, run_dir: Path, man: dict[str, Any],
                   show_progress: bool) -> None:
    exp = loaded.experiment
    caps = capabilities.Report.from_dict(man["capabilities"])
    if not caps.can_emulate:
        missing = [f"{c.name}: {c.fix}" for c in caps.checks if c.required and not c.ok]
        raise EmulationError("this machine cannot run emulations:\n  " + "\n  ".join(missing)
                             + "\n(`chaintwin doctor` shows the full report)")
    for p in exp.processes:
        if (isinstance(p, Iperf3Client | SlimClient) and p.congestion is not None
                and p.congestion not in caps.congestion_controls):
            if p.congestion == "abn":  # registered by the ABN sender role for the run
                chk = caps.get(capabilities.ABN_CC)
                if chk is None or not chk.ok:
                    raise EmulationError(
                        f"process {p.name}: congestion control 'abn' cannot be loaded here: "
                        f"{chk.detail if chk else 'not probed'}"
                        + (f" (fix: {chk.fix})" if chk and chk.fix else ""))
                continue
            raise EmulationError(f"process {p.name}: congestion control {p.congestion!r} is not "
                                 f"available here; available: {caps.congestion_controls}")
    backend: Backend = "netem" if caps.shaping_backend == "netem" else "userspace"
    topo = loaded.shaped_topology()
    man["topology"] = topo.model_dump(mode="json")
    man["topology_file"] = str(loaded.topology_path)
    man["shaping_backend"] = backend
    timeline_delay_links = {ev.link for ev in exp.timeline
                            if isinstance(ev, SetLink) and ev.needs_delay_line}
    timeline_delay_links |= faults.delay_line_links(exp.timeline, topo)
    net = Network(topo, backend, run_dir, exp.seed, timeline_delay_links)
    man["addressing"] = {"host_ips": net.plan.host_ips, "routes": net.plan.routes}
    man["shaping"] = [{"direction": d.key, "egress_intf": d.src_intf,
                       "shaping": d.shaping.model_dump(exclude_none=True),
                       "queue_num": d.queue_num or None} for d in net.directions]
    logs = run_dir / "logs"
    logs.mkdir()
    from mininet.log import setLogLevel

    setLogLevel("warning")
    logging.getLogger("mininet").propagate = False  # it has its own handler; no duplicates
    running: dict[str, processes.Running] = {}
    events_done: list[dict[str, Any]] = []
    t0_wall = 0.0
    sampler = health.HostCpuSampler(run_dir)
    role_list = roles.build(topo, exp, run_dir)
    try:
        with interrupts_raise():
            net.start()
            sampler.start()
            man["commands"] = net.commands
            manifest.write(run_dir, man)
            for role in role_list:  # captures, validators, ABN sender and shim (testbed/roles)
                role.start(net)
                role.ready(timeout=20)
            chain = roles.chain_runtime(role_list)
            t0_wall = time.time()
            man["timeline_t0_unix"] = t0_wall
            _timeline(loaded, net, running, events_done, logs, run_dir,
                      Progress(exp.name, exp.duration) if show_progress else None, chain,
                      role_list)
    finally:
        with interrupts_deferred():
            sampler.stop()  # first: teardown load is not the run's
            for r in running.values():
                if r.proc.poll() is None:
                    r.stopped_by_us = True
                    _stop_process(r.proc, sig=signal.SIGTERM)
            for role in reversed(role_list):
                try:
                    role.stop()
                except Exception as exc:  # noqa: BLE001 - teardown must go on
                    log.warning("stopping role %s: %s", role.name, exc)
            try:
                net.stop()
            finally:
                man["processes"] = [r.summary() for r in running.values()]
                man["events"] = events_done
                man.update(roles.collect(role_list))
                man["delay_lines"] = net.delay_line_stats()
                man["delay_line_offload"] = net.offload
                man["commands"] = net.commands
                if "timeline_t0_unix" in man:
                    man["health"] = health.judge(
                        run_dir, man["timeline_t0_unix"],
                        expect_delay_line=bool(net.delay_lines)).to_dict()
                manifest.write(run_dir, man)
    _analyse(run_dir, man, net, t0_wall)


def _timeline(loaded: LoadedExperiment, net: Network, running: dict[str, processes.Running],
              events_done: list[dict[str, Any]], logs: Path, run_dir: Path,
              prog: Progress | None, chain: chain_mod.ChainRuntime | None = None,
              role_list: list[roles.Role] | None = None) -> None:
    exp = loaded.experiment
    specs = {p.name: p for p in exp.processes}
    servers = {(p.host, p.port): p.name for p in exp.processes
               if isinstance(p, processes.SERVER_KINDS)}
    queue: list[tuple[float, int, int, Any]] = []
    seq = 0
    for p in exp.processes:
        order = 0 if isinstance(p, processes.SERVER_KINDS) else 1
        queue.append((p.start, order, seq, ProcessControl(at=p.start, action="start",
                                                          process=p.name)))
        seq += 1
        if p.stop is not None:
            queue.append((p.stop, 0, seq, ProcessControl(at=p.stop, action="stop",
                                                         process=p.name)))
            seq += 1
    for ev in exp.timeline:
        queue.append((ev.at, 2, seq, ev))
        seq += 1
    heapq.heapify(queue)
    start = time.monotonic()
    while True:
        now = time.monotonic() - start
        while queue and queue[0][0] <= now:
            _, _, _, ev = heapq.heappop(queue)
            record = _do_event(ev, net, running, specs, servers, logs, run_dir, exp.duration,
                               now, chain, role_list or [])
            events_done.append(record)
        processes.check_exits(running)
        for role in role_list or []:
            check = getattr(role, "check", None)
            if check is not None:
                check()
        net.check_delay_lines()
        if now >= exp.duration:
            break
        if exp.until_done and not queue and all(
                r.proc.poll() is not None for r in running.values()
                if not isinstance(r.spec, processes.SERVER_KINDS)):
            break
        if prog is not None:
            nxt = f"next: {queue[0][3].action} at {queue[0][0]:g} s" if queue else ""
            prog.update(now, nxt)
        wake = min(queue[0][0] if queue else exp.duration, exp.duration, now + 0.25)
        time.sleep(max(0.0, wake - (time.monotonic() - start)))
    if prog is not None:
        prog.done()


def _do_event(ev: Any, net: Network, running: dict[str, processes.Running],
              specs: dict[str, Any], servers: dict[tuple[str, int], str], logs: Path,
              run_dir: Path, duration: float, now: float,
              chain: chain_mod.ChainRuntime | None = None,
              role_list: list[roles.Role] | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"at": ev.at, "actual_s": round(now, 4), "action": ev.action}
    if isinstance(ev, ProcessControl):
        rec["process"] = ev.process
        spec = specs[ev.process]
        if ev.action == "start":
            address = processes.server_address(spec)
            if address is not None:
                srv = servers.get(address)
                if srv and srv in running:
                    processes.wait_listening(net.node(address[0]), address[1])
            declare = getattr(spec, "declare", None)
            hints = net.topo.hosts[declare].abn if declare in net.topo.hosts else None
            argv = processes.argv_for(spec, net.plan, run_dir, duration, chain,
                                      hints.hints_port if hints is not None else None)
            running[spec.name] = processes.start(net.node(spec.host), spec, argv, logs, now,
                                                 roles.wrap_process(role_list or [], argv))
            if isinstance(spec, processes.SERVER_KINDS) and not processes.wait_listening(
                    net.node(spec.host), spec.port):
                raise EmulationError(f"{spec.kind} {spec.name} is not listening on "
                                     f"{spec.host}:{spec.port}")
        elif ev.process in running and running[ev.process].proc.poll() is None:
            running[ev.process].stopped_by_us = True
            _stop_process(running[ev.process].proc)
    elif isinstance(ev, SetLink):
        rec["link"] = ev.link
        change = Shaping.model_validate(ev.model_dump(include=set(Shaping.model_fields)))
        rec["change"] = change.model_dump(exclude_none=True)
        rec["done"] = net.set_link(ev.link, change)
    elif isinstance(ev, LinkState):
        rec["link"] = ev.link
        net.set_link_state(ev.link, ev.action == "link_up")
    elif isinstance(ev, SwitchProtocol):
        assert chain is not None
        rec["protocol"] = ev.protocol
        argv = chain.switch_argv(ev)
        proc = popen(net.node(ev.host), argv, stdin=subprocess.DEVNULL,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            _stop_process(proc)
            raise EmulationError(f"switch_protocol at {ev.at} s: no reply in 10 s") from None
        rec["reply"] = out.decode(errors="replace").strip()
        if proc.returncode != 0:
            raise EmulationError(f"switch_protocol at {ev.at} s was refused: "
                                 f"{(out + err).decode(errors='replace').strip()}")
    elif isinstance(ev, HostState):
        rec["host"] = ev.host
        net.set_host_state(ev.host, ev.action == "host_up")
    elif isinstance(ev, FAULT_EVENTS):
        rec.update(faults.apply(ev, net, role_list or []))
    log.info("t=%.2f %s", now, rec)
    return rec


def _analyse(run_dir: Path, man: dict[str, Any], net: Network, t0: float) -> None:
    exp = man["experiment"]
    names: dict[tuple[str, int], str] = {}
    clients = []
    for p in exp.get("processes", []):
        if p["kind"] == "iperf3_client":
            names[(net.plan.ip_of(p["server"]), p["port"])] = p["name"]
            log_name = next((r["log"] for r in man.get("processes", []) if r["name"] == p["name"]),
                            f"{p['name']}.json")
            clients.append({"name": p["name"], "log": log_name, "congestion": p["congestion"]})
    made = []
    if man.get("captures"):
        made.append(analysis.write_throughput(run_dir, man["captures"], t0, names).name)
        made.append(analysis.FLOWS_CSV)
    out = analysis.iperf3_summary(run_dir, clients)
    if out is not None:
        made.append(out.name)
    fig = plots.throughput_figure(run_dir, man)
    if fig is not None:
        made.append(fig.name)
    made += [p.name for p in roles.analyse(run_dir, man)]
    for extra in COMPARISONS:
        made += [p.name for p in extra(run_dir, man)]
    man["artifacts"] = made
    manifest.write(run_dir, man)


def report(run_dir: Path) -> list[Path]:
    """Redraw a run's figures from its saved artifacts only."""
    man = manifest.read(run_dir)
    if man.get("mode") == "simulation":
        spec = jobs.get(man["simulation"]["job"])
        if spec.report is None:
            return []
        started = time.time()
        jobs.resolve(spec.report)(run_dir)
        return sorted(p for p in run_dir.glob("*.png") if p.stat().st_mtime >= started - 1)
    figs = [plots.throughput_figure(run_dir, man), *roles.analyse(run_dir, man),
            *(f for extra in COMPARISONS for f in extra(run_dir, man))]
    return [f for f in figs if f is not None and f.suffix == ".png"]
