"""Per-round state of the core at its current height (the protocols' rules read it)."""

from __future__ import annotations

from typing import Any

from nodes.consensus.messages import NodeId


class RoundState:
    """One round at the current height."""

    __slots__ = ("round", "proposal", "proposal_at", "prepares", "commits", "prepare_tally",
                 "commit_tally", "sent_commit", "timer_fired", "proposed")

    def __init__(self, round_: int) -> None:
        self.round = round_
        self.proposal: Any = None
        self.proposal_at = 0.0
        self.prepares: dict[NodeId, tuple[Any, str, float]] = {}
        """validator -> (digest, signature, received at); the first vote counts."""
        self.commits: dict[NodeId, tuple[Any, str, float]] = {}
        self.prepare_tally: dict[Any, int] = {}
        """digest -> PREPAREs counted for it (and `commit_tally` for COMMITs)."""
        self.commit_tally: dict[Any, int] = {}
        self.sent_commit = False
        self.timer_fired = False
        """The protocol's own timer fired (BigFoot: its fast path is over)."""
        self.proposed = False
