"""Protocols as registered rules objects plugged into the core's round skeleton.

Every protocol here shares IBFT's skeleton, which is the core's: round-robin proposer,
PRE-PREPARE, PREPARE, justified round changes with locking, state transfer. What a
protocol decides is *when this validator sends COMMIT or commits outright*, from the
accepted proposal and the PREPAREs counted for it, and what its own timers do. A rules
object is stateless; per-round state lives in the core's `RoundState`. Keeping the
round/lock logic common is what makes a switch at an agreed height safe.

Add a protocol: subclass `ProtocolRules`, decorate it with `@register`, import its
module in `nodes/consensus/__init__.py`. Drivers never change: they only execute effects.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

from nodes.consensus.ports import CoreConfig
from nodes.consensus.state import RoundState


class Core(Protocol):
    """What a rules object may use of the core (`nodes.consensus.core.Core`)."""

    n: int
    quorum: int
    config: CoreConfig

    def prepare_count(self, rs: RoundState) -> int: ...

    def send_commit(self, rs: RoundState) -> None: ...

    def commit_on_prepares(self, rs: RoundState) -> None: ...

    def start_protocol_timer(self, rs: RoundState, delay: float) -> None: ...


class ProtocolRules:
    name: ClassVar[str] = ""

    def on_proposal(self, core: Core, rs: RoundState) -> None:
        """This validator accepted the round's proposal and sent its PREPARE."""
        self.on_prepare(core, rs)

    def on_prepare(self, core: Core, rs: RoundState) -> None:
        """A PREPARE for the accepted proposal of the current round was counted."""
        raise NotImplementedError

    def on_timer(self, core: Core, rs: RoundState) -> None:
        """A timer this protocol started with `core.start_protocol_timer` fired."""
        raise AssertionError(f"{self.name} starts no protocol timer")

    def __deepcopy__(self, memo: dict[int, Any]) -> ProtocolRules:
        return self  # stateless


RULES: dict[str, ProtocolRules] = {}
"""The registry, by the names used in blocks, sensor records and switch commands."""


def register(cls: type[ProtocolRules]) -> type[ProtocolRules]:
    if not cls.name or cls.name in RULES:
        raise ValueError(f"protocol name {cls.name!r} is empty or taken")
    RULES[cls.name] = cls()
    return cls


def rules_for(name: str) -> ProtocolRules:
    try:
        return RULES[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known {sorted(RULES)}") from None
