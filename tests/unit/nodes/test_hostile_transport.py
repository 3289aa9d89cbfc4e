"""Hostile input at the transport (issue 18): what arrives is bounded before it is
believed. Each test is one finding of the issue, against a validator of a running
4-node cluster on 127.0.0.1, by a peer with no keys; the chain must keep committing."""

from __future__ import annotations

import asyncio
import gc
import struct
from pathlib import Path
from typing import Any

import pytest

from nodes import transport
from nodes.transport import encode
from tests.unit.nodes.cluster import Cluster, make_genesis


async def _cluster(tmp_path: Path) -> tuple[Cluster, Any]:
    genesis = make_genesis(tmp_path, 4, "pbft")
    cluster = Cluster(tmp_path, genesis)
    await cluster.start()
    return cluster, genesis.validators[0]


async def _closed(reader: asyncio.StreamReader, within: float = 5.0) -> bool:
    """The node closed our connection (EOF) within `within` seconds."""
    try:
        return await asyncio.wait_for(reader.read(), within) == b""
    except (TimeoutError, ConnectionError):
        return False


def _one_bad_frame(tmp_path: Path, data: bytes) -> Any:
    """Send `data` to v0 on a fresh connection: the node must close it and commit on.
    Returns v0's transport (its counters) once the cluster has stopped."""
    async def body() -> Any:
        cluster, v = await _cluster(tmp_path)
        try:
            r, w = await asyncio.open_connection(v.host, v.port)
            w.write(data)
            await w.drain()
            assert await _closed(r)
            node = cluster.nodes["v0"]
            await cluster.wait_height(node.ledger.height + 3, 10)
            return node.transport
        finally:
            await cluster.stop()

    return _run(body)


def _run(body: Any) -> Any:
    errors: list[Any] = []

    async def main() -> Any:
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: errors.append(ctx))
        return await body()

    out = asyncio.run(asyncio.wait_for(main(), 60))
    assert not errors, f"unhandled errors in the loop: {errors[:2]}"
    return out


def test_a_frame_longer_than_any_legal_message_is_refused_at_its_header(tmp_path: Path) -> None:
    got = _one_bad_frame(tmp_path, struct.pack(">I", transport.MAX_FRAME + 1) + b"{")
    assert got.refused["frame too big"] == 1


def test_unfinished_frames_are_bounded_in_bytes_all_together(tmp_path: Path) -> None:
    """Before: 8 connections each holding an unfinished 60 MB frame took +488 MB."""
    async def body() -> None:
        cluster, v = await _cluster(tmp_path)
        node = cluster.nodes["v0"]
        node.transport.max_inflight = 16 * 1024 * 1024  # a quarter (4 MB) per address
        try:
            held = []
            for _ in range(6):  # 6 x 1 MB claimed from one address
                r, w = await asyncio.open_connection(v.host, v.port)
                w.write(struct.pack(">I", 1024 * 1024) + b"{" * 1000)
                await w.drain()
                held.append((r, w))
            await asyncio.sleep(0.3)
            assert node.transport.refused["in-flight budget"] == 2
            assert node.transport._inflight == 4 * 1024 * 1024
            assert [await _closed(r, 1.0) for r, _ in held[4:]] == [True, True]
            # votes (small frames) still flow: the chain commits on
            await cluster.wait_height(node.ledger.height + 3, 10)
        finally:
            await cluster.stop()

    _run(body)


@pytest.mark.parametrize("body_bytes", [
    b'{"t": "prepare", "h": ' + b"9" * 5000 + b"}",   # past Python's int digit limit
    b"[" * 100_000 + b"]" * 100_000,                   # deeper than the recursion limit
    b'{"t": "prepare", "h": NaN}',
], ids=["5000-digit integer", "100k-deep nesting", "NaN"])
def test_undecodable_frames_close_the_connection_not_the_task(tmp_path: Path,
                                                               body_bytes: bytes) -> None:
    """Before: the first two escaped the frame reader as unhandled task exceptions."""
    got = _one_bad_frame(tmp_path, struct.pack(">I", len(body_bytes)) + body_bytes)
    assert got.frame_errors == 1


def test_connections_beyond_the_cap_are_refused_and_commits_go_on(tmp_path: Path) -> None:
    """Before: ~20,000 connections (the fd limit) stopped commits."""
    async def body() -> None:
        cluster, v = await _cluster(tmp_path)
        node = cluster.nodes["v0"]
        node.transport.max_conns_per_ip = 40  # every test connection comes from 127.0.0.1
        try:
            conns = [await asyncio.open_connection(v.host, v.port) for _ in range(60)]
            await asyncio.sleep(0.3)
            assert node.transport.refused["too many connections"] >= 20
            assert len(node.transport._conns) <= 40
            h = node.ledger.height
            await cluster.wait_height(h + 5, 10)
            for _, w in conns:
                w.close()
        finally:
            await cluster.stop()
        gc.collect()

    _run(body)


def test_a_flood_of_bad_messages_is_counted_not_logged_per_message(tmp_path: Path) -> None:
    """Before: a malformed `from` logged a traceback per message (+115 MB of log a
    minute under a flood)."""
    async def body() -> int:
        cluster, v = await _cluster(tmp_path)
        node = cluster.nodes["v0"]
        try:
            _, w = await asyncio.open_connection(v.host, v.port)
            for i in range(2000):
                w.write(encode({"t": "prepare", "from": {"x": i}, "h": 1, "r": 0,
                                "hash": "ab", "sig": "00"}))
            await w.drain()
            for _ in range(100):
                await asyncio.sleep(0.05)
                if node.counters["rejected_consensus"] >= 2000:
                    break
            assert node.counters["rejected_consensus"] == 2000
            return node.telemetry.counts.get("reject", 0)
        finally:
            await cluster.stop()

    records = _run(body)
    assert records <= 60, f"{records} telemetry records for 2,000 bad messages"
