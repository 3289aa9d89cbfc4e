"""Catch-up picks its peer by answer times: a crashed peer must drop to the back of the
line, and answers slower than the give-up time must still be measured (found in the
twin, issue 19: a lagging node asked a crashed peer every 0.58 s for 73 s because its
give-up time stayed below every live peer's true answer time)."""

from __future__ import annotations

import heapq
from typing import Any

from nodes.consensus import Committee, Core, NullAuth, Schedule
from nodes.consensus.events import (
    Applied,
    Commit,
    RequestSync,
    Start,
    StartTimer,
    TimerFired,
)
from nodes.consensus.messages import SyncResponse
from tests.unit.consensus.harness import CONFIG, LightBlocks, MemoryCluster
from tests.unit.consensus.plan import FaultPlan

DEAD = 1


def _chain() -> list[tuple[Any, Any]]:
    cluster = MemoryCluster(FaultPlan(seed=7, n=4, duration=4.0, gst=0.0)).run()
    chain = cluster.chains[2]
    assert len(chain) >= 12, len(chain)
    return chain


def test_a_crashed_peer_is_not_asked_again_and_slow_answers_are_measured() -> None:
    chain = _chain()
    tip = len(chain)
    core = Core(0, Committee(list(range(4)), NullAuth()), CONFIG, LightBlocks(0),
                Schedule("pbft"), 0, None, ())
    heap: list[tuple[float, int, Any]] = []
    seq = 0
    asked: list[tuple[float, Any]] = []
    answers = 0

    def at(t: float, ev: Any) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(heap, (t, seq, ev))

    def feed(ev: Any, now: float) -> None:
        nonlocal answers
        for e in core.handle(ev, now):
            if isinstance(e, RequestSync):
                asked.append((now, e.to))
                if e.to == DEAD:
                    continue  # crashed: never answers
                answers += 1
                delay = 0.05 if answers <= 2 else 1.2  # then big blocks on a thin link
                rows = tuple(chain[e.msg.start - 1:e.msg.start])
                at(now + delay, SyncResponse(e.to, rows, tip, "", tuple(b.digest
                                                                        for b, _ in rows)))
            elif isinstance(e, StartTimer):
                at(now + e.delay, TimerFired(e.kind, e.height, e.round))
            elif isinstance(e, Commit):
                at(now, Applied(e.block.height))

    feed(Start(), 0.0)
    for peer in (DEAD, 2, 3):  # every peer says it has the blocks
        feed(SyncResponse(peer, (), tip, "", ()), 0.0)
    while heap and heap[0][0] < 60.0 and core.tip_height < tip:
        t, _, ev = heapq.heappop(heap)
        feed(ev, t)
    assert core.tip_height == tip
    to_dead = [t for t, p in asked if p == DEAD]
    assert len(to_dead) <= 2, f"asked the crashed peer {len(to_dead)} times: {to_dead}"
    assert core._sync_give_up() > 1.2  # the slow answers were measured
