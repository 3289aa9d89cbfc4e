"""PBFT/IBFT commit rule: PREPARE quorum (2f+1) -> COMMIT; COMMIT quorum -> commit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodes.consensus.base import ConsensusProtocol

if TYPE_CHECKING:
    from nodes.consensus.engine import Engine, RoundState


class Pbft(ConsensusProtocol):
    name = "pbft"

    def on_proposal(self, engine: Engine, rs: RoundState) -> None:
        self.on_prepare(engine, rs)

    def on_prepare(self, engine: Engine, rs: RoundState) -> None:
        if engine.prepare_count(rs) >= engine.quorum:
            engine.send_commit(rs)

    def on_fast_timer(self, engine: Engine, rs: RoundState) -> None:
        raise AssertionError("PBFT starts no fast-path timer")
