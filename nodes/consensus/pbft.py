"""PBFT/IBFT: PRE-PREPARE, PREPARE, COMMIT. COMMIT after a quorum of PREPAREs for the
accepted proposal; the block commits on a quorum of COMMITs (the core's rule for every
protocol): three message delays after the proposal is sent."""

from __future__ import annotations

from nodes.consensus.rules import Core, ProtocolRules, register
from nodes.consensus.state import RoundState


@register
class Pbft(ProtocolRules):
    name = "pbft"

    def on_prepare(self, core: Core, rs: RoundState) -> None:
        if core.prepare_count(rs) >= core.quorum:
            core.send_commit(rs)
