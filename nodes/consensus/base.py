"""The consensus protocol interface: a commit rule plugged into a shared BFT round engine.

Every protocol here shares IBFT's skeleton (round-robin proposer, PRE-PREPARE, PREPARE,
justified round changes, state transfer), which lives in `consensus.engine`. What a
protocol decides is *when to commit*: PBFT sends COMMIT after 2f+1 PREPAREs and commits
on 2f+1 COMMITs; BigFoot commits on PREPAREs from all n before a fast-path timer and
otherwise falls back to PBFT. Keeping the round/lock logic common is what makes a
run-time switch a no-op for safety: the new rule starts at an agreed height.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from nodes.consensus.engine import Engine, RoundState


class ConsensusProtocol(ABC):
    name: ClassVar[str]

    @abstractmethod
    def on_proposal(self, engine: Engine, rs: RoundState) -> None:
        """Called once this node accepted the round's proposal and sent its PREPARE."""

    @abstractmethod
    def on_prepare(self, engine: Engine, rs: RoundState) -> None:
        """Called after each PREPARE for the accepted proposal is counted."""

    @abstractmethod
    def on_fast_timer(self, engine: Engine, rs: RoundState) -> None:
        """Called when a timer this protocol started with `engine.start_fast_timer` fires."""
