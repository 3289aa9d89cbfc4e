"""BigFoot commit rule (Saltini 2022): a fast path on unanimous PREPAREs.

A node that receives PREPARE from all n validators before `fast_path_timeout`
(started when it accepts the proposal) commits at once: two message delays and no
COMMIT phase; the n PREPARE signatures are the certificate. Otherwise, once the timer
has expired it falls back to PBFT (COMMIT after 2f+1 PREPAREs). So it is faster than
PBFT when everyone is up and slower by about the fast-path timeout when someone is not.
Round changes take the fast path into account (see `engine.select_value`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodes.consensus.base import ConsensusProtocol

if TYPE_CHECKING:
    from nodes.consensus.engine import Engine, RoundState


class BigFoot(ConsensusProtocol):
    name = "bigfoot"

    def on_proposal(self, engine: Engine, rs: RoundState) -> None:
        engine.start_fast_timer(rs, engine.timing.fast_path_timeout)
        self.on_prepare(engine, rs)

    def on_prepare(self, engine: Engine, rs: RoundState) -> None:
        count = engine.prepare_count(rs)
        if not rs.fast_expired and count == engine.n:
            engine.commit_fast(rs)
        elif rs.fast_expired and count >= engine.quorum:
            engine.send_commit(rs)

    def on_fast_timer(self, engine: Engine, rs: RoundState) -> None:
        rs.fast_expired = True
        self.on_prepare(engine, rs)
