"""Seeded fault plans: what the network and the clock do to a chain, for any driver.

A plan decides each message's fate from the message itself (kind, height, round,
sender, digest), its link and how often that same message went over that link before,
plus the send time; never from the order in which a driver happens to send. Before GST
messages may be lost, take longer than a round timeout, or be cut by a partition; after
GST every message arrives within 50 ms, except to and from a validator behind a thin
link (up to 0.4 s more, all run long). One validator may crash and restart from what it
persisted. Every driver fed the same plan must commit the same chains.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from nodes.consensus.messages import Proposal, RoundChange, SyncRequest, SyncResponse, Vote

BATCH_DELAY = 0.05
"""A round-0 proposer's batch is ready this long after it asks (all drivers)."""


def message_key(msg: Any) -> tuple[Hashable, ...]:
    t = type(msg)
    if t is Vote:
        return ("vote", msg.phase, msg.height, msg.round, msg.sender, msg.digest)
    if t is Proposal:
        return ("proposal", msg.height, msg.round, msg.sender, msg.block.digest)
    if t is RoundChange:
        return ("rc", msg.height, msg.round, msg.sender)
    if t is SyncRequest:
        return ("sync_req", msg.sender, msg.start)
    if t is SyncResponse:
        first = msg.digests[0] if msg.digests else (msg.blocks[0][0].digest if msg.blocks else None)
        return ("sync_resp", msg.sender, first, msg.tip)
    raise TypeError(f"no key for {msg!r}")


@dataclass
class FaultPlan:
    seed: int
    n: int = 4
    protocol: str = "pbft"
    duration: float = 8.0
    gst: float = 3.0
    drop: float = 0.0
    slow: float = 0.0
    """Share of messages before GST that take 0.3-1.5 s (round timeouts are 1 s)."""
    partition: tuple[float, float, frozenset[int]] | None = None
    """[start, end): validators in the group hear nobody outside it, and vice versa."""
    crash: tuple[int, float, float | None] | None = None
    """(validator, down at, restarted at or None: faulty to the end)."""
    switch_at: int | None = None
    """The block at this height orders a switch to the other protocol."""
    thin: int | None = None
    """A validator behind a slow link for the whole run, GST or not: its messages, both
    ways, take `thin_delay` more (it is correct: it must keep committing)."""
    thin_delay: float = 0.3
    _sent: dict[tuple[Any, ...], int] = field(default_factory=dict, repr=False)

    @classmethod
    def draw(cls, seed: int, n: int = 4, protocol: str | None = None,
             duration: float = 8.0) -> FaultPlan:
        rng = random.Random(seed)
        gst = rng.uniform(1.0, 3.0)
        partition = None
        if rng.random() < 0.4:
            t0 = rng.uniform(0.0, gst)
            size = rng.randint(1, (n - 1) // 3 + 1)
            partition = (t0, rng.uniform(t0, gst), frozenset(rng.sample(range(n), size)))
        crash = None
        if rng.random() < 0.5:
            t0 = rng.uniform(0.0, gst)
            up = rng.uniform(t0, gst) if rng.random() < 0.7 else None
            crash = (rng.randrange(n), t0, up)
        plan = cls(seed, n, protocol or rng.choice(["pbft", "bigfoot"]), duration, gst,
                   drop=rng.choice([0.0, 0.05, 0.2]), slow=rng.choice([0.0, 0.05, 0.15]),
                   partition=partition, crash=crash,
                   switch_at=rng.choice([None, None, rng.randint(2, 6)]))
        if rng.random() < 0.3:  # drawn last: the other draws stay what they were
            plan.thin = rng.randrange(n)
            plan.thin_delay = rng.uniform(0.1, 0.4)
        return plan

    def other_protocol(self) -> str:
        return "bigfoot" if self.protocol == "pbft" else "pbft"

    def faulty(self) -> set[int]:
        return {self.crash[0]} if self.crash is not None and self.crash[2] is None else set()

    def up(self, node: int, t: float) -> bool:
        c = self.crash
        return c is None or c[0] != node or t < c[1] or (c[2] is not None and t >= c[2])

    def delay(self, src: int, dst: int, msg: Any, now: float) -> float | None:
        """Seconds until `msg` sent by src at `now` reaches dst, or None if lost."""
        key = (src, dst, message_key(msg))
        k = self._sent[key] = self._sent.get(key, 0) + 1
        digest = hashlib.blake2b(repr((self.seed, key, k)).encode(), digest_size=12).digest()
        u1, u2, u3 = (int.from_bytes(digest[i:i + 4], "big") / 2**32 for i in (0, 4, 8))
        if now < self.gst:
            p = self.partition
            if p is not None and p[0] <= now < p[1] and ((src in p[2]) != (dst in p[2])):
                return None
            if u1 < self.drop:
                return None
            if u2 < self.slow:
                return 0.3 + 1.2 * u3
        extra = self.thin_delay if self.thin is not None and self.thin in (src, dst) else 0.0
        return 0.001 + 0.049 * u3 + extra
