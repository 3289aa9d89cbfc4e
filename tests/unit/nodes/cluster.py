"""In-process test cluster: n real nodes on 127.0.0.1 in one event loop."""

from __future__ import annotations

import asyncio
import gc
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodes.config import Genesis, load_genesis
from nodes.crypto import KeyPair
from nodes.genesis import write_genesis
from nodes.node import Node
from nodes.transport import DelayFn
from nodes.tx import Transaction

FAST_TIMING = {
    "round_timeout": 0.6,
    "max_round_timeout": 1.2,
    "round_backoff": 1.5,
    "fast_path_timeout": 0.15,
    "empty_block_period": 0.2,
}


def free_ports(k: int) -> list[int]:
    socks = []
    for _ in range(k):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def make_genesis(folder: Path, n: int, protocol: str = "pbft", **timing: Any) -> Genesis:
    write_genesis(
        folder, n, ports=free_ports(n), protocol=protocol, timing={**FAST_TIMING, **timing}
    )
    return load_genesis(folder / "genesis.yaml")


class Cluster:
    def __init__(self, folder: Path, genesis: Genesis, delay: DelayFn | None = None) -> None:
        self.folder = folder
        self.genesis = genesis
        self.delay = delay
        self.nodes: dict[str, Node] = {}
        self.stopped: dict[str, Node] = {}
        self.client_key = KeyPair.load(folder / "keys" / "client0.key")
        self.twin_key = KeyPair.load(folder / "keys" / "twin.key")
        self._seq = 0
        self.twin_endpoints: dict[str, str] = {}

    def make_node(self, vid: str, cls: Callable[..., Node] = Node) -> Node:
        return cls(
            vid,
            self.genesis,
            KeyPair.load(self.folder / "keys" / f"{vid}.key"),
            self.folder / "data" / vid,
            telemetry_path=self.folder / "telemetry" / f"{vid}.jsonl",
            delay=self.delay,
            twin_endpoint=self.twin_endpoints.get(vid),
        )

    async def start(
        self, skip: tuple[str, ...] = (), overrides: dict[str, Callable[..., Node]] | None = None
    ) -> None:
        # n validators share this process's collector, and a full pass over what earlier
        # tests left in the heap (TensorFlow, the twin's runs: ~0.4 s at 0.5 M objects
        # here) stalls every one of them at once, which a real validator, alone in its
        # process with a frozen start-up heap (`nodes.cli`), never sees.
        gc.collect()
        gc.freeze()
        for v in self.genesis.validators:
            if v.id in skip:
                continue
            node = self.make_node(v.id, (overrides or {}).get(v.id, Node))
            await node.start()
            self.nodes[v.id] = node

    async def crash(self, vid: str) -> None:
        node = self.nodes.pop(vid)
        await node.stop()
        self.stopped[vid] = node

    async def stop(self) -> None:
        for node in list(self.nodes.values()):
            await node.stop()
        self.nodes.clear()
        gc.unfreeze()

    def tx(self, size: int = 50) -> Transaction:
        self._seq += 1
        return Transaction.create(
            self.client_key, "client0", f"t{self._seq}", time.time(), b"x" * size
        )

    def submit(self, count: int = 1) -> list[Transaction]:
        txs = [self.tx() for _ in range(count)]
        for node in self.nodes.values():
            for tx in txs:
                node._tx_ack(tx.to_wire())
        return txs

    async def wait_height(
        self, height: int, timeout: float, nodes: list[str] | None = None
    ) -> float:
        t0 = time.time()
        ids = nodes or list(self.nodes)
        # Durable and announced, not just appended (the fsync runs in a worker thread).
        while min(self.nodes[i].ledger.durable_height for i in ids) < height:
            if time.time() - t0 > timeout:
                heights = {i: self.nodes[i].ledger.durable_height for i in ids}
                raise AssertionError(f"height {height} not reached in {timeout}s: {heights}")
            await asyncio.sleep(0.02)
        return time.time() - t0

    def chains(self) -> dict[str, list[str]]:
        return {vid: n.ledger.hashes() for vid, n in self.nodes.items()}


def assert_prefix_consistent(chains: dict[str, list[str]]) -> None:
    """Safety: every honest chain is a prefix of every other (Twins' common_sequence)."""
    items = list(chains.items())
    for a, ca in items:
        for b, cb in items:
            k = min(len(ca), len(cb))
            assert ca[:k] == cb[:k], f"chains of {a} and {b} diverge"
