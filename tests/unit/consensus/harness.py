"""A tiny in-memory driver for the consensus core, and light blocks for it.

The driver is what the asyncio and twin drivers are, minus the I/O: a heap of
(time, seq) events, the plan's delays, timers that die with a crash, commits that are
"durable" in a list, a restart that rebuilds the core from that list and the persisted
votes. The property tests run thousands of plans through it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nodes.consensus import Committee, Core, CoreConfig, NullAuth, Schedule, Timeouts
from nodes.consensus.events import (
    Applied,
    BatchReady,
    Broadcast,
    CancelTimer,
    Commit,
    CommitInfo,
    Log,
    PersistVote,
    RequestSync,
    Send,
    ServeSync,
    Start,
    StartTimer,
    TimerFired,
    WantBatch,
)
from nodes.consensus.messages import Certificate, SyncResponse, Vote
from tests.unit.consensus.plan import BATCH_DELAY, FaultPlan

CONFIG = CoreConfig(timeouts=Timeouts(base=1.0, backoff=1.5, cap=4.0, fast_path=0.2))

CommitRow = tuple[int, Any, str, int, bool, float, bool]
"""(height, digest, protocol, round, fast path, committed at, synced) of one commit."""


@dataclass(frozen=True)
class LightBlock:
    digest: str
    height: int
    proposer: Any
    protocol: str
    parent: Any
    switch: str | None = None
    voters: frozenset[Any] | None = None
    """Who voted in the builder's certificate of the parent (the proposer pool)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> LightBlock:
        return self


class LightBlocks:
    """Blocks that are just their identity; block `switch_at` orders a switch."""

    def __init__(self, me: Any, switch_at: int | None = None, switch_to: str = "",
                 tip_cert: Callable[[], Certificate | None] = lambda: None) -> None:
        self.me = me
        self.switch_at = switch_at
        self.switch_to = switch_to
        self.tip_cert = tip_cert

    def build(self, height: int, parent: Any, protocol: str, now: float,
              prev_cert: Certificate | None = None) -> LightBlock:
        switch = self.switch_to if height == self.switch_at else None
        cert = prev_cert if prev_cert is not None else self.tip_cert()
        voters = None if cert is None else frozenset(v.validator for v in cert.votes)
        return LightBlock(f"{height}/{self.me}/{now!r}", height, self.me, protocol, parent,
                          switch, voters)

    def check(self, block: Any, parent: Any) -> str | None:
        return None if block.parent == parent else "does not extend our tip"

    def switches(self, block: Any) -> Sequence[tuple[str, int | None]]:
        return ((block.switch, None),) if block.switch else ()

    def size(self, block: Any) -> int:
        return 1000

    def voters(self, block: Any) -> frozenset[Any] | None:
        return block.voters


def row(block: Any, info: CommitInfo) -> CommitRow:
    return (block.height, block.digest, block.protocol, info.round, info.fast_path,
            info.committed_at, info.synced)


class MemoryCluster:
    """n cores on one heap, fed the plan's delays, crash and restart."""

    def __init__(self, plan: FaultPlan, ids: Sequence[Any] | None = None,
                 blocks: Callable[[Any], Any] | None = None,
                 auth: Callable[[Any], Any] | None = None,
                 config: CoreConfig = CONFIG) -> None:
        self.plan = plan
        self.ids = list(ids if ids is not None else range(plan.n))
        self.config = config
        other = plan.other_protocol()
        self._blocks = blocks or (lambda me: LightBlocks(
            me, plan.switch_at, other, lambda: self.chains[me][-1][1] if self.chains[me] else None))
        self._auth = auth or (lambda me: NullAuth())
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self.cores: dict[Any, Core | None] = dict.fromkeys(self.ids)
        self.epoch = dict.fromkeys(self.ids, 0)
        self.chains: dict[Any, list[tuple[Any, Certificate]]] = {i: [] for i in self.ids}
        self.votes: dict[Any, list[tuple[Vote, Any]]] = {i: [] for i in self.ids}
        self.commits: dict[Any, list[CommitRow]] = {i: [] for i in self.ids}
        self.logs: list[tuple[float, Any, str, dict[str, Any]]] = []
        self._committed = False
        self.effects: list[tuple[float, Any, Any]] | None = None
        """Set to a list to record every effect (the golden traces)."""

    # ---- the world ------------------------------------------------------------------
    def at(self, t: float, fn: Callable[..., None], *args: Any) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, fn, args))

    def run(self, until: Callable[[MemoryCluster], bool] | None = None) -> MemoryCluster:
        """Run to the plan's duration, or until `until(self)` holds after a commit."""
        for i in self.ids:
            self.at(0.0, self.start, i)
        c = self.plan.crash
        if c is not None:
            self.at(c[1], self.crash, self.ids[c[0]])
            if c[2] is not None:
                self.at(c[2], self.start, self.ids[c[0]])
        while self._heap and self._heap[0][0] <= self.plan.duration:
            t, _, fn, args = heapq.heappop(self._heap)
            self.now = t
            fn(*args)
            if self._committed and until is not None:
                self._committed = False
                if until(self):
                    break
        return self

    def start(self, me: Any) -> None:
        self.epoch[me] += 1
        chain = self.chains[me]
        blocks = self._blocks(me)
        schedule = Schedule.from_chain(self.plan.protocol, self.config.reconfig_delay,
                                       ((b.height, blocks.switches(b)) for b, _ in chain))
        tip = chain[-1][0] if chain else None
        self.cores[me] = Core(me, Committee(self.ids, self._auth(me)), self.config, blocks,
                              schedule, len(chain), tip.digest if tip is not None else None,
                              self.votes[me], blocks.voters(tip) if tip is not None else None)
        self.feed(me, Start())

    def crash(self, me: Any) -> None:
        self.epoch[me] += 1
        self.cores[me] = None

    def deliver(self, me: Any, msg: Any) -> None:
        if self.cores[me] is not None:
            self.feed(me, msg)

    def fire(self, me: Any, epoch: int, event: Any) -> None:
        if self.epoch[me] == epoch and self.cores[me] is not None:
            self.feed(me, event)

    def send(self, src: Any, dst: Any, msg: Any) -> None:
        d = self.plan.delay(self.ids.index(src), self.ids.index(dst), msg, self.now)
        if d is not None:
            self.at(self.now + d, self.deliver, dst, msg)

    # ---- the driver -------------------------------------------------------------------
    def feed(self, me: Any, event: Any) -> None:
        core = self.cores[me]
        assert core is not None
        pending = [event]
        while pending:
            for e in core.handle(pending.pop(0), self.now):
                if self.effects is not None:
                    self.effects.append((self.now, me, e))
                t = type(e)
                if t is Broadcast:
                    for dst in self.ids:
                        if dst != me:
                            self.send(me, dst, e.msg)
                elif t is Send:
                    self.send(me, e.to, e.msg)
                elif t is StartTimer:
                    self.at(self.now + e.delay, self.fire, me, self.epoch[me],
                            TimerFired(e.kind, e.height, e.round))
                elif t is CancelTimer:
                    pass
                elif t is Commit:
                    self.chains[me].append((e.block, e.cert))
                    self.votes[me] = []
                    self.commits[me].append(row(e.block, e.info))
                    self._committed = True
                    pending.append(Applied(e.block.height))
                elif t is PersistVote:
                    self.votes[me].append((e.vote, e.block))
                elif t is RequestSync:
                    for dst in ([e.to] if e.to is not None else self.ids):
                        if dst != me:
                            self.send(me, dst, e.msg)
                elif t is ServeSync:
                    rows = tuple(self.chains[me][e.start - 1:e.start - 1 + e.limit])
                    tip, digests = len(self.chains[me]), tuple(b.digest for b, _ in rows)
                    sig = core.c.auth.sign(SyncResponse(me, (), tip, "", digests))
                    self.send(me, e.to, SyncResponse(me, rows, tip, sig, digests))
                elif t is WantBatch:
                    self.at(self.now + BATCH_DELAY, self.fire, me, self.epoch[me],
                            BatchReady(e.height))
                elif t is Log:
                    self.logs.append((self.now, me, e.kind, e.data))
                else:
                    raise TypeError(e)


def check_safety(chains: dict[Any, list[CommitRow]]) -> None:
    """Every ledger a prefix of the longest; never two blocks at one height."""
    for me, rows in chains.items():
        heights = [r[0] for r in rows]
        assert heights == list(range(1, len(rows) + 1)), f"{me} committed heights {heights}"
    longest = max(chains.values(), key=len)
    for me, rows in chains.items():
        assert [r[1] for r in rows] == [r[1] for r in longest[: len(rows)]], \
            f"{me}'s chain is not a prefix of the longest"
