"""A slow fsync must not stall a validator, and nothing is announced before it is on disk.

One fsync of the ledger took 0.2-0.65 s now and then on this machine's disk; done on the
event loop it held every vote and timer (all validators at once in the in-process
cluster), so rounds timed out with every validator up.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from nodes.ledger import Ledger
from nodes.node import Node
from tests.unit.nodes.cluster import Cluster, assert_prefix_consistent, make_genesis

FLUSH_SECONDS = 0.3


def test_slow_fsync_blocks_neither_the_loop_nor_durability(
    tmp_path: Path, monkeypatch: Any
) -> None:
    flushed: dict[str, int] = {}  # ledger path -> highest height whose flush completed
    lock = threading.Lock()
    real_flush = Ledger.flush

    def slow_flush(self: Ledger) -> None:
        height = self.height  # appended before the flush started
        time.sleep(FLUSH_SECONDS)
        real_flush(self)
        with lock:
            flushed[str(self.path)] = max(flushed.get(str(self.path), 0), height)

    announced_early: list[tuple[str, int]] = []
    real_committed = Node.committed

    def checked_committed(self: Node, block: Any, cert: Any, record: Any) -> None:
        with lock:
            if flushed.get(str(self.ledger.path), 0) < block.height:
                announced_early.append((self.id, block.height))
        real_committed(self, block, cert, record)

    monkeypatch.setattr(Ledger, "flush", slow_flush)
    monkeypatch.setattr(Node, "committed", checked_committed)

    async def body() -> float:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, 4, "pbft"))
        lag = 0.0
        try:
            await cluster.start()
            cluster.submit(20)
            t_end = time.monotonic() + 3 * FLUSH_SECONDS * 4
            while time.monotonic() < t_end and min(
                    n.ledger.durable_height for n in cluster.nodes.values()) < 4:
                t0 = time.monotonic()
                await asyncio.sleep(0.01)
                lag = max(lag, time.monotonic() - t0 - 0.01)
            assert min(n.ledger.durable_height for n in cluster.nodes.values()) >= 4
            assert_prefix_consistent(cluster.chains())
        finally:
            await cluster.stop()
        return lag

    lag = asyncio.run(asyncio.wait_for(body(), 30))
    assert lag < FLUSH_SECONDS / 3, f"the event loop stalled {lag:.2f} s during fsyncs"
    assert not announced_early, f"announced before on disk: {announced_early}"
