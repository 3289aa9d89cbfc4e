"""BigFoot (Saltini 2022): a fast path on unanimous PREPAREs.

A validator that counts PREPAREs from all n for the proposal it accepted, before its
fast-path timer (started when it accepted) fires, commits at once: two message delays,
no COMMIT phase; the n PREPARE signatures are the certificate. Once the timer has fired
it also runs PBFT's COMMIT phase (COMMIT after a quorum of PREPAREs; commit on a quorum
of COMMITs), and still commits if all n PREPAREs arrive later: they are a certificate
whenever they arrive, and the others may have decided on them and sent no COMMIT (the
proposer, whose timer starts first, otherwise waited for state transfer at most
heights). So it is faster than PBFT when everyone
is up and slower by about the fast-path timeout when someone is not. Round changes
re-propose a possibly fast-committed block (`values.select_value`).
"""

from __future__ import annotations

from nodes.consensus.rules import Core, ProtocolRules, register
from nodes.consensus.state import RoundState


@register
class BigFoot(ProtocolRules):
    name = "bigfoot"

    def on_proposal(self, core: Core, rs: RoundState) -> None:
        core.start_protocol_timer(rs, core.config.timeouts.fast_path)
        self.on_prepare(core, rs)

    def on_prepare(self, core: Core, rs: RoundState) -> None:
        count = core.prepare_count(rs)
        if count == core.n:
            core.commit_on_prepares(rs)
        elif rs.timer_fired and count >= core.quorum:
            core.send_commit(rs)

    def on_timer(self, core: Core, rs: RoundState) -> None:
        rs.timer_fired = True
        self.on_prepare(core, rs)
