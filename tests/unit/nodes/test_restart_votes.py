"""A restarted node is bound by the votes it sent before it was killed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from nodes.block import Block, seal_bytes
from nodes.consensus.events import TimerFired
from nodes.crypto import KeyPair
from tests.unit.nodes.cluster import Cluster, make_genesis


def _proposal(key: KeyPair, prev: str, stamp: float) -> dict[str, Any]:
    block = Block.create(key, 1, prev, "pbft", "v1", stamp, [])
    return {
        "t": "proposal",
        "from": "v1",
        "h": 1,
        "r": 0,
        "block": block.to_wire(),
        "just": None,
        "sent_at": stamp,
        "sig": key.sign(seal_bytes("proposal", 1, 0, block.hash)),
    }


def test_no_second_prepare_in_a_round_after_restart(tmp_path: Path) -> None:
    async def body() -> None:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, 4))
        v1 = KeyPair.load(tmp_path / "keys" / "v1.key")
        prev = cluster.genesis.hash()
        first, second = _proposal(v1, prev, 1.0), _proposal(v1, prev, 2.0)
        node = cluster.make_node("v0")
        await node.start()  # alone: nobody else runs, so height 1 cannot commit
        node._on_frame(first, None)  # type: ignore[arg-type]
        assert node.core.rounds[0].prepares["v0"][0] == first["block"]["hash"]
        await node.stop()  # as good as kill -9 for the vote table: nothing else is flushed

        again = cluster.make_node("v0")
        await again.start()
        sent: list[dict[str, Any]] = []
        again.transport.broadcast = sent.append  # type: ignore[method-assign]
        again.transport.send = lambda peer, msg, frame=None: sent.append(msg)  # type: ignore[method-assign]
        try:
            assert again.core.last_vote is not None
            assert again.core.last_vote[1] == first["block"]["hash"]
            again._on_frame(second, None)  # type: ignore[arg-type]
            assert again.counters["rejected_proposal"] == 1
            assert "v0" not in again.core._rs(0).prepares
            again._on_frame(first, None)  # type: ignore[arg-type]  # the same block is fine
            assert again.core.rounds[0].prepares["v0"][0] == first["block"]["hash"]
            again.driver.feed(TimerFired("round", 1, 0))  # round 0 times out
            rcs = [m for m in sent if m["t"] == "rc"]  # one per peer, blocks to round 1's
            assert len(rcs) == 3 and sum(1 for m in rcs if m["blocks"]) == 1  # proposer
            assert all(m["r"] == 1 and m["voted"]["hash"] == first["block"]["hash"] for m in rcs)
        finally:
            await again.stop()

    asyncio.run(asyncio.wait_for(body(), 20))
