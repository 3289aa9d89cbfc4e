"""What the core needs from the outside, as two small interfaces, and the core's settings.

`Authenticator` signs what this validator sends and checks what others signed (ed25519
over the validators' wire bytes in `nodes.auth`; nothing in the twin, `NullAuth`).
`BlockRules` builds a block to propose and says whether a proposed block is acceptable
content (parent, transactions, size): the validators' rules read their mempool and
ledger, the twin's take a range of its transaction stream. Neither decides anything
about votes, rounds or commits: those are the core's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nodes.consensus.messages import _Immutable


class BlockLike(Protocol):
    """All the core reads of a block."""

    @property
    def digest(self) -> Any: ...

    @property
    def height(self) -> int: ...

    @property
    def proposer(self) -> Any: ...

    @property
    def protocol(self) -> str: ...


class Authenticator(Protocol):
    def sign(self, msg: Any) -> str:
        """Signature of this validator over `msg` (its `sig` field is ignored)."""
        ...

    def verify(self, msg: Any) -> bool:
        """Does `msg.sig` verify under the key of `msg.sender`? Never raises."""
        ...


class BlockRules(Protocol):
    def build(self, height: int, parent: Any, protocol: str, now: float,
              prev_cert: Any = None) -> Any:
        """A new block at `height` on top of `parent` (a digest) for `protocol`, carrying
        `prev_cert` (the core's certificate of `parent` with every COMMIT it got; None
        after a restart: the one the ledger holds)."""
        ...

    def check(self, block: Any, parent: Any) -> str | None:
        """None if the block's content may extend `parent`, else why not."""
        ...

    def switches(self, block: Any) -> Sequence[tuple[str, int | None]]:
        """Protocol switches the block orders: (protocol, requested height or None)."""
        ...

    def size(self, block: Any) -> int:
        """Bytes the block takes (bounds the out-of-window buffer), deterministic."""
        ...

    def voters(self, block: Any) -> frozenset[Any] | None:
        """Validators named in the certificate `block` carries (of its parent, checked
        with the block), None if it carries none: the next height's proposer pool."""
        ...


class NullAuth(_Immutable):
    """No signatures (the twin): every message verifies, signatures are empty."""

    __slots__ = ()

    def sign(self, msg: Any) -> str:
        return ""

    def verify(self, msg: Any) -> bool:
        return True


@dataclass(frozen=True, slots=True)
class Timeouts(_Immutable):
    """The round-timeout schedule: round r waits min(base * backoff**r, cap) seconds,
    plus `first_round_extra` in round 0 (the time a producer may wait for a batch)."""

    base: float = 1.0
    backoff: float = 1.5
    cap: float = 4.0
    fast_path: float = 0.2
    """BigFoot waits this long for PREPAREs from all n before its COMMIT phase."""
    first_round_extra: float = 0.0

    def __post_init__(self) -> None:
        if self.base <= 0 or self.backoff < 1 or self.cap < self.base or self.fast_path <= 0:
            raise ValueError(f"bad timeouts {self!r}: need base > 0, backoff >= 1, "
                             "cap >= base, fast_path > 0")

    def round(self, r: int) -> float:
        t = min(self.base * self.backoff ** min(r, 64), self.cap)
        return t + self.first_round_extra if r == 0 else t


@dataclass(frozen=True, slots=True)
class Window(_Immutable):
    """Which messages for later heights/rounds are kept until they can be used."""

    heights_ahead: int = 4
    """Messages for heights beyond height + this are dropped (we are behind: sync)."""
    rounds_ahead: int = 100
    """Messages for rounds beyond round + this (round 0 + this at a later height) are
    dropped: no honest validator gets that far ahead with capped timeouts."""
    max_messages: int = 4096
    max_bytes: int = 64 * 1024 * 1024
    """Buffered messages at most, in count and bytes, shared equally by the validators
    (one validator cannot fill the others' share)."""


@dataclass(frozen=True, slots=True)
class CoreConfig(_Immutable):
    timeouts: Timeouts = field(default_factory=Timeouts)
    window: Window = field(default_factory=Window)
    reconfig_delay: int = 2
    """A switch ordered in block H takes effect at max(requested, H + this)."""
    sync_interval: float = 0.25
    """Seconds between two sync requests of ours (unless the last answer said there is
    more), and between two hints to one lagging peer."""
    sync_timeout: float = 4.0
    """A sync request unanswered this long is given up: ask another peer."""
    sync_fresh: float = 30.0
    """A sync request is served only if its signed time is within this many seconds of
    ours and later than the asker's last one served (a replay is refused: issue 18)."""
    lag_grace: float = 0.2
    """Votes one height ahead: wait this long for our own commit before asking."""
    sync_batch: int = 50
    """Blocks per sync answer at most..."""
    sync_bytes: int = 256 * 1024
    """...and bytes (the driver stops before a block that would pass this; one block
    always goes): an answer takes < 1 s on a 3 Mbit/s link, so one request in flight
    keeps a thin link busy without queueing minutes of blocks on it."""
    carry_backoff: bool = True
    """Back-off carried across heights (issue 17): a height that committed in a round above 0
    starts the next one a step further up the timeout schedule, one committed in round
    0 a step down. False: every height starts at the base timeout."""
    proposer_pool: bool = True
    """Validators named in the tip block's certificate propose first
    (`Committee.proposer_order`); False: plain round robin."""
    log_votes: bool = False
    """Emit a 'vote' Log per counted vote (the validators' telemetry wants them)."""
