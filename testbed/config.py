"""Load and validate experiment and topology YAML files, with `--set` overrides.

Everything is checked before anything starts: the schema of each file, then the
experiment against its topology (hosts, links, servers it names). Errors name the
file, the field path and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from nodes.strict_yaml import load_strict
from testbed.errors import ConfigError
from testbed.experiment_schema import (
    Experiment,
    HostState,
    Iperf3Client,
    LinkState,
    Partition,
    Ping,
    SetLink,
    SlimClient,
    Slow,
    SwitchProtocol,
)
from testbed.topology_schema import Topology

PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class LoadedExperiment:
    experiment: Experiment
    topology: Topology | None
    path: Path
    topology_path: Path | None
    overrides: tuple[str, ...] = ()

    def shaped_topology(self) -> Topology:
        """The topology with the experiment's link, sysctl and ABN overrides applied."""
        assert self.topology is not None
        topo = self.topology.model_copy(deep=True)
        links = []
        for link in topo.links:
            over = self.experiment.links.get(link.link_name)
            if over is not None:
                link = link.merged(over)
            links.append(link)
        exp = self.experiment
        hosts = {name: spec.model_copy(update={
                     "sysctls": {**spec.sysctls, **exp.sysctls.get(name, {})},
                     "abn": exp.abn[name] if name in exp.abn else spec.abn})
                 for name, spec in topo.hosts.items()}
        return topo.model_copy(update={"links": links, "hosts": hosts})


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid ({err.error_count()} problem(s))"]
    for e in err.errors():
        msg = e["msg"].removeprefix("Value error, ")
        got = e.get("input")
        shown = "" if isinstance(got, dict | list) or got is None else f" (got {got!r})"
        lines.append(f"  {_loc(tuple(e['loc']))}: {msg}{shown}")
    return "\n".join(lines)


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        data = load_strict(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def validate(model: type[BaseModel], data: Any, source: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply `path.to.field=value` overrides (value parsed as YAML) to raw config data.

    List items are addressed by index (`processes.1.congestion=bbr`) or, for lists of
    named items, by name (`processes.cubic.congestion=bbr`).
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected PATH=VALUE, e.g. duration=5")
        path, raw = item.split("=", 1)
        keys = [k for k in path.strip().split(".") if k]
        if not keys:
            raise ConfigError(f"--set {item!r}: empty path")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {path}: value {raw!r} is not valid YAML: {exc}") from None
        node: Any = data
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            where = ".".join(keys[: depth + 1])
            if isinstance(node, list):
                idx = _list_index(node, key, where)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            elif isinstance(node, dict):
                if last:
                    node[key] = value
                else:
                    node = node.setdefault(key, {})
            else:
                raise ConfigError(
                    f"--set {path}: {'.'.join(keys[:depth])} is a value, not a section"
                )
    return data


def _list_index(items: list[Any], key: str, where: str) -> int:
    if key.isdigit():
        idx = int(key)
        if idx >= len(items):
            raise ConfigError(f"--set {where}: index {idx} out of range ({len(items)} items)")
        return idx
    for i, it in enumerate(items):
        if isinstance(it, dict) and it.get("name") == key:
            return i
    raise ConfigError(f"--set {where}: no list item named {key!r}")


def resolve_topology_path(exp_path: Path, ref: str) -> Path:
    for base in (exp_path.parent, PROJECT_ROOT, Path.cwd()):
        cand = (base / ref).resolve()
        if cand.is_file():
            return cand
    raise ConfigError(f"{exp_path}: topology: file {ref!r} not found next to the experiment "
                      f"or under {PROJECT_ROOT}")


def load_topology(path: Path) -> Topology:
    return validate(Topology, read_yaml(path), str(path))


def load_experiment(
    path: str | Path, overrides: list[str] | tuple[str, ...] = ()
) -> LoadedExperiment:
    path = Path(path).resolve()
    data = apply_overrides(read_yaml(path), overrides)
    source = f"{path}" + (f" (with --set {' '.join(overrides)})" if overrides else "")
    exp: Experiment = validate(Experiment, data, source)
    topo = topo_path = None
    if exp.mode == "emulation":
        assert exp.topology is not None
        topo_path = resolve_topology_path(path, exp.topology)
        topo = load_topology(topo_path)
        check_against_topology(exp, topo, source)
    loaded = LoadedExperiment(exp, topo, path, topo_path, tuple(overrides))
    if exp.mode == "simulation":
        from testbed import jobs

        jobs.validate_params(exp, source)
    return loaded


def check_against_topology(exp: Experiment, topo: Topology, source: str) -> None:
    problems: list[str] = []
    hosts = set(topo.hosts)
    links = {link.link_name for link in topo.links}
    for name in exp.links:
        if name not in links:
            problems.append(f"links.{name}: no such link in topology {topo.name!r}; "
                            f"known: {sorted(links)}")
    for i, p in enumerate(exp.processes):
        if p.host not in hosts:
            problems.append(f"processes[{i}].host: unknown host {p.host!r}; known: {sorted(hosts)}")
        target = getattr(p, "server", None) or getattr(p, "target", None)
        if isinstance(p, Iperf3Client | Ping | SlimClient) and target not in hosts:
            field = "target" if isinstance(p, Ping) else "server"
            problems.append(f"processes[{i}].{field}: unknown host {target!r}")
        if isinstance(p, SlimClient) and p.declare is not None:
            shim = (exp.abn[p.declare] if p.declare in exp.abn
                    else topo.hosts[p.declare].abn if p.declare in hosts else None)
            if shim is None or shim.hints_port is None:
                problems.append(f"processes[{i}].declare: host {p.declare!r} runs no ABN shim "
                                "with a hints_port to declare flows to")
        if p.stop is not None and p.stop <= p.start:
            problems.append(f"processes[{i}].stop: must be after start ({p.start} s)")
    for i, ev in enumerate(exp.timeline):
        if isinstance(ev, SetLink | LinkState) and ev.link not in links:
            problems.append(f"timeline[{i}].link: no such link {ev.link!r}; known: {sorted(links)}")
        if isinstance(ev, HostState | Slow) and ev.host not in hosts:
            problems.append(f"timeline[{i}].host: unknown host {ev.host!r}")
        if isinstance(ev, Slow) and not any(ev.host in link.ends for link in topo.links):
            problems.append(f"timeline[{i}].host: {ev.host!r} has no link to slow down")
        if isinstance(ev, Partition):
            for g, group in enumerate(ev.groups):
                for h in group:
                    if h not in hosts:
                        problems.append(f"timeline[{i}].groups[{g}]: unknown host {h!r}")
    if exp.chain is not None:
        for i, host in enumerate(exp.chain.validators):
            if host not in hosts:
                problems.append(f"chain.validators[{i}]: unknown host {host!r}")
        if len(set(exp.chain.validators)) != len(exp.chain.validators):
            problems.append("chain.validators: a host may run one validator only")
        try:
            from nodes.config import Timing

            Timing(**exp.chain.timing)
        except (ValueError, TypeError) as exc:
            problems.append(f"chain.timing: {exc}".replace("\n", " "))
    for i, p in enumerate(exp.processes):
        for t in getattr(p, "targets", None) or []:
            if exp.chain is not None and t not in exp.chain.validators:
                problems.append(f"processes[{i}].targets: {t!r} runs no validator")
    for i, ev in enumerate(exp.timeline):
        if isinstance(ev, SwitchProtocol):
            if ev.host not in hosts:
                problems.append(f"timeline[{i}].host: unknown host {ev.host!r}")
            if exp.chain is not None and ev.target and ev.target not in exp.chain.validators:
                problems.append(f"timeline[{i}].target: {ev.target!r} runs no validator")
    for i, cap in enumerate(exp.captures):
        if cap.host not in hosts:
            problems.append(f"captures[{i}].host: unknown host {cap.host!r}")
    for host in exp.sysctls:
        if host not in hosts:
            problems.append(f"sysctls.{host}: unknown host; known: {sorted(hosts)}")
    for host in exp.abn:
        if host not in hosts:
            problems.append(f"abn.{host}: unknown host; known: {sorted(hosts)}")
    if exp.abn and not problems:
        # the shims must fit the topology as the experiment shapes it (forwarding host,
        # its own link, capacity within the link's rate): check the merged result
        try:
            Topology.model_validate(LoadedExperiment(exp, topo, Path(source),
                                                     None).shaped_topology().model_dump())
        except ValidationError as exc:
            problems.append(str(exc).replace("\n", " "))
    if problems:
        raise ConfigError(f"{source}: does not fit its topology\n  " + "\n  ".join(problems))
