"""What validators send each other, as typed records the core reads and writes.

The core never sees bytes: the validators' codec (`nodes.wire`) maps these to the JSON
frames on the wire, the twin passes the objects themselves through its event kernel.
A block is opaque here (`ports.BlockLike`: digest, height, proposer, protocol). Records
are immutable, so copies of a simulated chain (the twin's what-if clones) share them.
Received messages are the core's message events (`Core.handle(msg, now)`).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

NodeId = Hashable
"""A validator's name: 'v0' on the validators, an index in the twin."""


class _Immutable:
    """Deep copies of immutable records are the records themselves."""

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self

    def __copy__(self) -> Any:
        return self


@dataclass(frozen=True, slots=True)
class BlockRef(_Immutable):
    """A block named by its digest only: what a ROUND-CHANGE carries to everyone but the
    new round's proposer (issue 17: round changes each carrying a multi-MB locked block
    to every peer on every timeout stalled a chain behind a congested link)."""

    digest: Any
    height: int

    @property
    def hash(self) -> Any:
        return self.digest

    @property
    def size_bytes(self) -> int:
        return 0


@dataclass(frozen=True, slots=True)
class Vote(_Immutable):
    """A PREPARE or COMMIT vote for a block digest at (height, round); also the shape of
    a vote inside a certificate or a prepared certificate when its signature is checked,
    and (phase 'proposal') of the proposer's seal on a proposal."""

    phase: str
    height: int
    round: int
    sender: NodeId
    digest: Any
    sig: str = ""


@dataclass(frozen=True, slots=True)
class PreparedCert(_Immutable):
    """q PREPARE signatures for `block` at `round`: the sender's lock."""

    round: int
    block: Any
    votes: tuple[tuple[NodeId, str], ...]


@dataclass(frozen=True, slots=True)
class VoteClaim(_Immutable):
    """The sender's own last PREPARE at this height (round, block, its signature)."""

    round: int
    block: Any
    sig: str


@dataclass(frozen=True, slots=True)
class RoundChange(_Immutable):
    """ROUND-CHANGE to `round`, carrying the sender's highest prepared certificate and
    its last PREPARE vote at this height (what `values.select_value` reads)."""

    height: int
    round: int
    sender: NodeId
    prepared: PreparedCert | None
    voted: VoteClaim | None
    sig: str = ""


@dataclass(frozen=True, slots=True)
class Proposal(_Immutable):
    """PRE-PREPARE: the round's proposer offers `block`; above round 0 it carries the
    quorum of round changes that justify the value."""

    height: int
    round: int
    sender: NodeId
    block: Any
    justification: tuple[RoundChange, ...] | None = None
    sig: str = ""


@dataclass(frozen=True, slots=True)
class CertVote(_Immutable):
    validator: NodeId
    phase: str
    sig: str


@dataclass(frozen=True, slots=True)
class Certificate(_Immutable):
    """Votes proving a block committed: q COMMITs, or PREPAREs from all n (fast path)."""

    height: int
    round: int
    digest: Any
    votes: tuple[CertVote, ...]


@dataclass(frozen=True, slots=True)
class SyncRequest(_Immutable):
    """Ask for committed blocks from height `start` on. `at` is the asker's clock when it
    asked, signed with the rest: a request is served once, and only while fresh."""

    sender: NodeId
    start: int
    at: float = 0.0
    sig: str = ""


@dataclass(frozen=True, slots=True)
class SyncResponse(_Immutable):
    """Committed blocks with their certificates, consecutive from the first; `tip` is
    the sender's height, so the receiver knows whether to ask again."""

    sender: NodeId
    blocks: tuple[tuple[Any, Certificate], ...]
    tip: int
    sig: str = ""
    digests: tuple[Any, ...] = ()
    """Every block digest the sender listed (its signature covers them); `blocks` may
    leave out those the receiver's codec skipped as already committed."""


ConsensusMessage = Proposal | Vote | RoundChange
"""Messages that belong to one (height, round)."""
