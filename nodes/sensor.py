"""Per-block sensor records: what block producers tell the digital twin.

The twin paper's sensors are the block producers: each block's extra-data field holds
the timestamped consensus history, from which one can tell who was online and estimate
link speeds. A `BlockSensorRecord` is that history as seen by one node when it commits
a block. The live nodes (nodes/) emit them, and the twin's discrete-event model
(twin/) produces records of the same shape, so the twin's calibration code reads both.

Times are seconds on the recording node's clock (time.time() on a live node,
simulated seconds in the model). This is a shared contract: add optional fields only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Phase = Literal["prepare", "commit"]


@dataclass(frozen=True)
class VoteTiming:
    validator: str
    phase: Phase
    received_at: float
    """When the recorder received this validator's vote."""


@dataclass(frozen=True)
class RoundChange:
    round: int
    at: float
    reason: str
    """'timeout' (the proposer was silent or slow) or 'equivocation' etc."""


@dataclass(frozen=True)
class BlockSensorRecord:
    height: int
    round: int
    protocol: str
    """Consensus protocol the block was made under: 'pbft' or 'bigfoot'."""
    proposer: str
    recorder: str
    """Node that emitted this record."""
    proposed_at: float
    """When the proposal (PRE-PREPARE) was sent, as stamped by the proposer."""
    proposal_received_at: float
    """When the recorder received the proposal."""
    committed_at: float
    """When the recorder committed the block."""
    tx_count: int
    tx_bytes: int
    """Sum of the transactions' payload sizes."""
    block_bytes: int
    """Encoded size of the block as sent on the wire."""
    tx_first_submit: float | None = None
    """Earliest client submit time among the block's transactions."""
    tx_latency_sum: float = 0.0
    """Sum over the block's transactions of (committed_at - submit time)."""
    fast_path: bool = False
    """BigFoot committed on its fast path (PREPARE from all n before the timer)."""
    votes: tuple[VoteTiming, ...] = ()
    round_changes: tuple[RoundChange, ...] = ()
    silent: tuple[str, ...] = ()
    """Validators from which no vote for this block arrived."""
    validators: tuple[str, ...] = field(default=())
    """The validator set at this height."""
    cert_voters: tuple[str, ...] = ()
    """Validators named in the certificate the block carries (its parent's): the
    proposer pool of the next height (`Committee.proposer_order`); empty for none."""
    synced: bool = False
    """The recorder got this block by state transfer (catching up), not by voting:
    `votes`, `silent` and `round_changes` are then empty and times are arrival times."""

    @property
    def mean_tx_latency(self) -> float | None:
        return self.tx_latency_sum / self.tx_count if self.tx_count else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockSensorRecord:
        d = dict(data)
        d["votes"] = tuple(VoteTiming(**v) for v in d.get("votes", ()))
        d["round_changes"] = tuple(RoundChange(**r) for r in d.get("round_changes", ()))
        d["silent"] = tuple(d.get("silent", ()))
        d["validators"] = tuple(d.get("validators", ()))
        d["cert_voters"] = tuple(d.get("cert_voters", ()))
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"BlockSensorRecord: unknown fields {sorted(unknown)}")
        return cls(**d)
