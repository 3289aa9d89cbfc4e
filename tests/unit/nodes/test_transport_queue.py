"""The per-peer send queue: bounded in bytes and age, so a slow or cut-off peer gets
fresh messages when it can take them, never a backlog of stale ones (issue 17)."""

from __future__ import annotations

import asyncio

from nodes.transport import PeerQueue


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _queue(max_bytes: int = 100, max_age: float = 5.0) -> tuple[PeerQueue, _Clock]:
    clock = _Clock()

    async def make() -> PeerQueue:
        return PeerQueue(max_bytes, max_age, clock)

    return asyncio.run(make()), clock


def test_a_full_queue_drops_its_oldest_frames_first() -> None:
    q, _ = _queue(max_bytes=100)
    for i in range(12):
        q.put(bytes([i]) * 10)
    assert q.bytes == 100 and q.dropped_full == 2
    assert [f[0] for f in q.take(1000)] == list(range(2, 12))
    q.put(b"x" * 101)  # larger than the whole bound: dropped, nothing else lost
    assert q.dropped_full == 3 and q.bytes == 0


def test_frames_older_than_max_age_are_dropped_unsent() -> None:
    q, clock = _queue(max_bytes=1000, max_age=5.0)
    q.put(b"old")
    clock.t = 4.0
    q.put(b"new")
    clock.t = 6.0
    assert q.take(1000) == [b"new"]
    assert q.dropped_stale == 1 and q.bytes == 0 and len(q) == 0


def test_take_hands_out_at_most_limit_bytes_but_always_one_frame() -> None:
    q, _ = _queue(max_bytes=10_000)
    q.put(b"a" * 300)
    q.put(b"b" * 300)
    q.put(b"c" * 300)
    assert q.take(700) == [b"a" * 300, b"b" * 300]
    q.put(b"d" * 2000)
    assert q.take(100) == [b"c" * 300]
    assert q.take(100) == [b"d" * 2000]  # a frame bigger than the limit still goes
    assert q.bytes == 0
