"""Fault events of the timeline: crash and restart a validator, slow a host's links,
partition the network and heal it (issue 17). The runner hands each such event to
`apply`; what it needs lives elsewhere (processes in the validators role, links and
packet filters in `Network`), so a new kind of fault is a function here, not a branch
in the runner."""

from __future__ import annotations

from typing import Any

from testbed.errors import EmulationError
from testbed.experiment_schema import Heal, Partition, Slow, ValidatorFault
from testbed.topology_schema import Shaping


def apply(ev: Any, net: Any, roles: list[Any]) -> dict[str, Any]:
    """Carry out one fault event; return what the manifest records of it."""
    if isinstance(ev, ValidatorFault):
        validators = next((r for r in roles if r.name == "validators"), None)
        if validators is None:
            raise EmulationError(f"{ev.action} at {ev.at} s: the run has no validators")
        pid = validators.crash(ev.host) if ev.action == "crash" else validators.restart(ev.host)
        return {"host": ev.host, "pid": pid}
    if isinstance(ev, Slow):
        change = Shaping.model_validate(ev.model_dump(include=set(Shaping.model_fields)))
        done: dict[str, list[str]] = {}
        for link in net.topo.links:
            if ev.host in link.ends:
                done[link.link_name] = net.set_link(link.link_name, change)
        return {"host": ev.host, "change": change.model_dump(exclude_none=True), "done": done}
    if isinstance(ev, Partition):
        return {"groups": ev.groups, "rules": net.partition(ev.groups)}
    if isinstance(ev, Heal):
        return {"removed": net.heal()}
    raise TypeError(f"not a fault event: {ev!r}")


def delay_line_links(timeline: list[Any], topo: Any) -> set[str]:
    """Links a `slow` event reshapes with delay or loss (they need a delay line)."""
    out: set[str] = set()
    for ev in timeline:
        if isinstance(ev, Slow) and ev.needs_delay_line:
            out |= {link.link_name for link in topo.links if ev.host in link.ends}
    return out
