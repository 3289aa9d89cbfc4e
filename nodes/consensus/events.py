"""What drivers tell the core (besides received messages) and what the core asks of them.

Events: `Start` (once per incarnation), `TimerFired`, `BatchReady` (the producer's
transactions are ready for a round-0 proposal), `SwitchProtocol` (an agreed protocol
switch from a height on), `Applied` (the driver made a `Commit` durable), plus every
message of `messages` (a received message is its own event, a `SyncResponse` too).

Effects, executed by the driver in list order: `Broadcast`/`Send` a message,
`StartTimer`/`CancelTimer`, `Commit` a block (then feed `Applied` for it), `RequestSync`
(send the request it carries), `ServeSync` (send our blocks from a height), `WantBatch`
(feed `BatchReady` when the pool has something to propose, or when an empty block is
due), `PersistVote` (store it before the vote it precedes is sent), `Log`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nodes.consensus.messages import Certificate, NodeId, SyncRequest, Vote, _Immutable

ROUND_TIMER = "round"
PROTOCOL_TIMER = "protocol"
LAG_TIMER = "lag"
SYNC_TIMER = "sync"


# ---- events -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Start(_Immutable):
    """Begin at the height after the core's tip (first start or a restart)."""


@dataclass(frozen=True, slots=True)
class TimerFired(_Immutable):
    kind: str
    height: int
    round: int


@dataclass(frozen=True, slots=True)
class BatchReady(_Immutable):
    height: int


@dataclass(frozen=True, slots=True)
class SwitchProtocol(_Immutable):
    """Run `protocol` from `height` on; every core of the chain gets the same event."""

    protocol: str
    height: int


@dataclass(frozen=True, slots=True)
class Applied(_Immutable):
    height: int


# ---- effects ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Broadcast(_Immutable):
    msg: Any


@dataclass(frozen=True, slots=True)
class Send(_Immutable):
    to: NodeId
    msg: Any


@dataclass(frozen=True, slots=True)
class StartTimer(_Immutable):
    kind: str
    height: int
    round: int
    delay: float


@dataclass(frozen=True, slots=True)
class CancelTimer(_Immutable):
    kind: str
    height: int
    round: int


@dataclass(frozen=True, slots=True)
class CommitInfo(_Immutable):
    """How the block was decided, as the recorder saw it (times are the `now` values the
    core was handed: wall time on a validator, simulated time in the twin)."""

    height: int
    round: int
    fast_path: bool
    proposal_received_at: float
    committed_at: float
    votes: tuple[tuple[NodeId, str, float], ...] = ()
    """(validator, phase, received at) of every vote counted at the deciding round."""
    round_changes: tuple[tuple[int, float, str], ...] = ()
    """(round, at, reason) of the round changes at this height."""
    silent: tuple[NodeId, ...] = ()
    """Validators from which no vote arrived at the deciding round."""
    synced: bool = False
    """Taken from a peer's certificate (state transfer), not decided here."""


@dataclass(frozen=True, slots=True)
class Commit(_Immutable):
    block: Any
    cert: Certificate
    info: CommitInfo


@dataclass(frozen=True, slots=True)
class RequestSync(_Immutable):
    """Send `msg` to `to`, or to every validator when `to` is None."""

    to: NodeId | None
    msg: SyncRequest


@dataclass(frozen=True, slots=True)
class ServeSync(_Immutable):
    """Send `to` a `SyncResponse`: our tip and committed blocks [start, start + limit)
    with their certificates, stopping before `max_bytes` (one block always goes).
    `limit` 0 is a hint: our tip only, "you are behind, ask"; always sent, as is an
    answer with no blocks (the asker learns our tip and stops waiting)."""

    to: NodeId
    start: int
    limit: int
    max_bytes: int = 1 << 62


@dataclass(frozen=True, slots=True)
class WantBatch(_Immutable):
    height: int


@dataclass(frozen=True, slots=True)
class PersistVote(_Immutable):
    """Store this vote (with the block for a PREPARE) so a restart never votes twice;
    phase 'rc' (digest "") is the round of a ROUND-CHANGE we sent: never vote below it."""

    vote: Vote
    block: Any = None


@dataclass(frozen=True, slots=True)
class Log(_Immutable):
    """Something worth recording: 'reject' (what, detail), 'vote', 'round_change',
    'switch', 'equivocation', 'stale_proposal', 'reproposal', 'dropped', 'sync'."""

    kind: str
    data: dict[str, Any] = field(default_factory=dict)


Effect = (
    Broadcast | Send | StartTimer | CancelTimer | Commit | RequestSync | ServeSync
    | WantBatch | PersistVote | Log
)
