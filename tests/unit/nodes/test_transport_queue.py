"""The per-peer send queue: bounded in bytes and age, so a slow or cut-off peer gets
fresh messages when it can take them, never a backlog of stale ones (issue 17)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

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


async def _until(done: Callable[[], bool], tries: int = 100) -> None:
    """Poll every 20 ms until `done()` or `tries` polls have passed (the caller asserts)."""
    for _ in range(tries):
        await asyncio.sleep(0.02)
        if done():
            return


def test_a_vote_does_not_wait_behind_a_block_on_a_stalled_path() -> None:
    """The peer stops reading the connection a 4 MB proposal came on (a congested path:
    its buffers fill); a vote sent after it still arrives, on the control lane."""
    from nodes.transport import _LEN, Transport

    async def body() -> list[str]:
        got: list[str] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                try:
                    (n,) = _LEN.unpack(await reader.readexactly(4))
                except asyncio.IncompleteReadError:
                    return
                if n > 1_000_000:  # the bulk lane: read no further (stalled)
                    got.append("big started")
                    await asyncio.sleep(30)
                    return
                got.append(json.loads(await reader.readexactly(n))["t"])

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        a = Transport("a", {"b": ("127.0.0.1", port)}, lambda msg, conn: None)
        await a.start("127.0.0.1", 0)
        try:
            a.send("b", {"t": "proposal", "block": "x" * 4_000_000})
            await _until(lambda: bool(got))
            a.send("b", {"t": "prepare", "h": 1})
            await _until(lambda: "prepare" in got)
            return got
        finally:
            await a.close()
            server.close()

    assert asyncio.run(asyncio.wait_for(body(), 20)) == ["big started", "prepare"]


def test_the_first_frame_after_a_peer_restarts_reaches_the_new_process() -> None:
    """The peer's process dies and a new one listens on the same port; the first big
    frame sent afterwards (a sync answer, on a lane idle since before the crash) must
    reach the new process, not die in the kernel buffer of the dead connection."""
    from nodes.transport import _LEN, Transport

    async def body() -> list[str]:
        got: list[str] = []
        conns: list[asyncio.StreamWriter] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conns.append(writer)
            while True:
                try:
                    (n,) = _LEN.unpack(await reader.readexactly(4))
                    got.append(json.loads(await reader.readexactly(n))["t"])
                except (asyncio.IncompleteReadError, ConnectionError):
                    return

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        a = Transport("a", {"b": ("127.0.0.1", port)}, lambda msg, conn: None)
        await a.start("127.0.0.1", 0)
        try:
            a.send("b", {"t": "sync_resp", "blocks": "x" * 200_000})  # opens the bulk lane
            await _until(lambda: bool(got), tries=200)
            server.close()  # the process dies: its sockets close
            for w in conns:
                w.transport.abort()
            await server.wait_closed()
            server = await asyncio.start_server(serve, "127.0.0.1", port)
            await asyncio.sleep(1.5)  # the restarted peer is up before anyone writes
            a.send("b", {"t": "sync_resp", "blocks": "y" * 200_000})
            await _until(lambda: len(got) == 2, tries=200)
            return got
        finally:
            await a.close()
            server.close()

    assert asyncio.run(asyncio.wait_for(body(), 20)) == ["sync_resp", "sync_resp"]
