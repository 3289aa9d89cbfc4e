"""The consensus core, shared by the validators (nodes/) and the twin (twin/).

A sans-I/O state machine (`core.Core.handle(event, now) -> effects`) with every
consensus rule: the quorum (`quorum`), locks, values and certificates (`values`),
rounds, round changes and their timeouts, out-of-window messages and state transfer
(`core`, `ports`, `window`), the switch at a height (`schedule`), and each protocol's
commit rule as a registered rules object (`rules`, `pbft`, `bigfoot`). Drivers map
effects to I/O: `nodes.driver` (asyncio, TCP, SQLite) and `twin.simnode` (the twin's
event kernel and network model). This package imports nothing else from `nodes`.
"""

from nodes.consensus import bigfoot, pbft  # noqa: F401  (register the protocols)
from nodes.consensus.core import Core
from nodes.consensus.ports import (
    Authenticator,
    BlockLike,
    BlockRules,
    CoreConfig,
    NullAuth,
    Timeouts,
    Window,
)
from nodes.consensus.quorum import fault_tolerance, quorum_size
from nodes.consensus.rules import RULES, ProtocolRules, register, rules_for
from nodes.consensus.schedule import Schedule
from nodes.consensus.state import RoundState
from nodes.consensus.values import Committee, Invalid, certificate_problem

PROTOCOLS = RULES
"""Protocols by name (the registry)."""

__all__ = [
    "PROTOCOLS", "RULES", "Authenticator", "BlockLike", "BlockRules", "Committee", "Core",
    "CoreConfig", "Invalid", "NullAuth", "ProtocolRules", "RoundState", "Schedule",
    "Timeouts", "Window", "certificate_problem", "fault_tolerance", "quorum_size",
    "register", "rules_for",
]
