"""Hostile input at the consensus layer (issue 18): a message that is not verified
changes no state and earns no reply; a signed request is served once, while fresh.
Against a 4-validator cluster on 127.0.0.1 (or one core, where that is enough)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from nodes.auth import signed_bytes
from nodes.consensus import Committee, Core, CoreConfig, Schedule
from nodes.consensus.messages import SyncRequest, Vote
from nodes.consensus.ports import NullAuth
from nodes.crypto import KeyPair
from nodes.transport import encode
from nodes.wire import encode as wire_encode
from tests.unit.nodes.cluster import Cluster, make_genesis


def _sync_out(cluster: Cluster, vid: str) -> int:
    return cluster.nodes[vid].transport.traffic[("out", "sync_resp")]


@contextlib.asynccontextmanager
async def _at_v0(tmp_path: Path, height: int) -> AsyncIterator[tuple[Cluster, Any]]:
    """A 4-validator cluster past `height`, and a raw connection (its writer) to v0."""
    genesis = make_genesis(tmp_path, 4, "pbft")
    cluster = Cluster(tmp_path, genesis)
    try:
        await cluster.start()
        await cluster.wait_height(height, 20)
        v0 = genesis.validators[0]
        _, w = await asyncio.open_connection(v0.host, v0.port)
        yield cluster, w
    finally:
        await cluster.stop()


def _sync_request_of_v1(key: KeyPair, at: float) -> bytes:
    """A sync request signed with v1's key (held by the attacker), as a frame."""
    req = SyncRequest("v1", 1, at)
    return encode(wire_encode(SyncRequest("v1", 1, at, key.sign(signed_bytes(req)))))


def test_an_unsigned_vote_for_an_old_height_earns_no_reply(tmp_path: Path) -> None:
    """Before: a vote naming an old height made the validator send 10 blocks to
    whichever validator the vote named (92 kB in, 66.6 MB out)."""
    async def body() -> tuple[int, int, int]:
        async with _at_v0(tmp_path, 12) as (cluster, w):
            sent = 0
            before = _sync_out(cluster, "v0")
            for h in range(1, 9):  # a different old height each time
                frame = encode({"t": "prepare", "from": "v1", "h": h, "r": 0,
                                "hash": "ab" * 32, "sig": "00" * 64})
                w.write(frame)
                sent += len(frame)
            await w.drain()
            await asyncio.sleep(1.0)
            return sent, _sync_out(cluster, "v0") - before, \
                cluster.nodes["v0"].counters["rejected_prepare"]

    sent, out, rejected = asyncio.run(asyncio.wait_for(body(), 60))
    assert rejected == 8
    assert out == 0, f"{out} bytes of sync answers for {sent} bytes of forged votes"


def test_a_replayed_sync_request_is_served_once(tmp_path: Path) -> None:
    """Before: one captured signed sync_req replayed 2,000 times was served every time
    (358 kB in, 48 MB out)."""
    async def body() -> tuple[int, int]:
        async with _at_v0(tmp_path, 12) as (cluster, w):
            key = KeyPair.load(tmp_path / "keys" / "v1.key")
            frame = _sync_request_of_v1(key, cluster.nodes["v0"].driver.clock())
            before = _sync_out(cluster, "v0")
            w.write(frame)
            await w.drain()
            await asyncio.sleep(0.5)
            once = _sync_out(cluster, "v0") - before
            for _ in range(200):
                w.write(frame)
            await w.drain()
            await asyncio.sleep(1.0)
            return once, _sync_out(cluster, "v0") - before

    once, total = asyncio.run(asyncio.wait_for(body(), 60))
    assert once > 0, "the fresh request was not served"
    assert total == once, f"replays were served: {total} bytes after the first {once}"


def test_one_asker_draws_at_most_its_byte_budget_per_second(tmp_path: Path,
                                                            monkeypatch) -> None:
    """A validator's key in hostile hands: fresh, signed sync requests as fast as the
    core lets them through are served up to the per-asker byte budget, no more. Before:
    16 answers a second, whatever they weighed (1.2 MB in 2 s here; 0.2 MB after)."""
    from nodes import driver

    monkeypatch.setattr(driver, "SERVE_BUDGET", 64 * 1024)
    monkeypatch.setattr(driver, "SERVE_BURST", 64 * 1024)

    async def body() -> tuple[int, int, float]:
        async with _at_v0(tmp_path, 15) as (cluster, w):
            key = KeyPair.load(tmp_path / "keys" / "v1.key")
            clock = cluster.nodes["v0"].driver.clock
            before = _sync_out(cluster, "v0")
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            answers = 0
            while loop.time() - t0 < 2.0:
                w.write(_sync_request_of_v1(key, clock()))
                await w.drain()
                await asyncio.sleep(0.02)
                answers += 1
            await asyncio.sleep(0.3)
            return answers, _sync_out(cluster, "v0") - before, loop.time() - t0

    asked, out, seconds = asyncio.run(asyncio.wait_for(body(), 60))
    one_answer = 100 * 1024  # an answer of this idle chain weighs ~40 KB
    bound = 64 * 1024 + 64 * 1024 * seconds + one_answer
    assert 0 < out <= bound, f"{out} bytes served for {asked} requests in {seconds:.1f} s"


def test_unsigned_votes_create_no_round_state() -> None:
    """Before: unsigned prepares created round state before the signature check (200k:
    +73 MB)."""
    class Refuse(NullAuth):
        def verify(self, msg: object) -> bool:
            return False

    core = Core(0, Committee([0, 1, 2, 3], Refuse()), CoreConfig(), _NoBlocks(),
                Schedule("pbft"))
    from nodes.consensus.events import Start

    core.handle(Start(), 0.0)
    before = len(core.rounds)
    for r in range(1, 101):
        core.handle(Vote("prepare", 1, r, 1, "d"), 0.1)
    assert len(core.rounds) == before


class _NoBlocks:
    def build(self, height: int, parent: object, protocol: str, now: float,
              prev_cert: object = None) -> object:
        raise AssertionError("not proposing here")

    def check(self, block: object, parent: object) -> str | None:
        return None

    def switches(self, block: object) -> tuple[()]:
        return ()

    def size(self, block: object) -> int:
        return 100

    def voters(self, block: object) -> None:
        return None
