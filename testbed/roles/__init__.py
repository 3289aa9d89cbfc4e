"""Roles: the parts of a run that start after the network and stop before it, each in its
own module behind one small lifecycle, so the runner only sequences them.

A role module exposes `build(topology, experiment, run_dir) -> list[Role]` and
`analyse(run_dir, manifest) -> list[Path]` (figures and tables from the run folder only,
so `chaintwin report` redraws them); `ROLE_MODULES` lists the modules the runner asks.
The runner calls, for every role, `start` then `ready` (in list order, before the
timeline), and at the end `stop` then `collect` (in reverse order, also after an error
or Ctrl-C). Optional: `wrap_process(argv) -> argv` (shape how the timeline's processes
start: the ABN sender puts them in its cgroup), `check()` (called on every timeline
tick; raises if the role failed, e.g. a validator died), `manifest_key` (keep what
`collect` returns at that manifest key instead of under `roles`), `wrappers` (a role
that starts its own processes gets the roles before it and applies their
`wrap_process`). Roles: packet
captures, the chain's validators, the ABN sender and shim. The timeline's own processes
(traffic, clients) are what the runner sequences; the twin service plugs in as a role.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

from testbed.experiment_schema import Experiment
from testbed.topology_schema import Topology

ROLE_MODULES = ("testbed.roles.captures", "testbed.roles.abn_sender",
                "testbed.roles.validators", "testbed.roles.abn_shim")
"""In start order: captures first (they see everything), the ABN sender (the congestion
control and its cgroup) before the chain whose validators may run in it, the shim last."""


class Role(Protocol):
    name: str

    def start(self, net: Any) -> None:
        """Launch it (in its host's namespace); return without waiting."""

    def ready(self, timeout: float) -> None:
        """Return once it serves; raise EmulationError naming what went wrong."""

    def stop(self) -> None:
        """Stop it and undo what it set up; must be safe to call twice or after a failed
        start."""

    def collect(self) -> dict[str, Any]:
        """What the manifest keeps of it (counters, files it wrote in the run folder)."""


def build(topology: Topology, experiment: Experiment, run_dir: Path) -> list[Role]:
    roles: list[Role] = []
    for name in ROLE_MODULES:
        roles += importlib.import_module(name).build(topology, experiment, run_dir)
    for i, role in enumerate(roles):  # a role that starts processes itself (validators)
        if hasattr(role, "wrappers"):  # starts them as the roles before it want
            role.wrappers = roles[:i]
    return roles


def collect(roles: list[Role]) -> dict[str, Any]:
    """What the manifest keeps: a role with a `manifest_key` (captures, chain) under that
    key, the others under `roles` by name."""
    out: dict[str, Any] = {}
    for role in roles:
        key = getattr(role, "manifest_key", None)
        if key is not None:
            out[key] = role.collect()
        else:
            out.setdefault("roles", {})[role.name] = role.collect()
    return out


def chain_runtime(roles: list[Role]) -> Any:
    """The started chain (what the timeline's clients and protocol switches talk to)."""
    return next((r.runtime for r in roles if r.name == "validators"), None)  # type: ignore[attr-defined]


def wrap_process(roles: list[Role], argv: list[str]) -> list[str]:
    """A timeline process's command line, as every role that cares wants it started."""
    for role in roles:
        wrap = getattr(role, "wrap_process", None)
        if wrap is not None:
            argv = wrap(argv)
    return argv


def analyse(run_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """Every role module's figures and tables, from the run folder only."""
    made: list[Path] = []
    for name in ROLE_MODULES:
        made += importlib.import_module(name).analyse(run_dir, manifest)
    return made
