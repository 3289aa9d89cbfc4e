"""Safety and liveness of PBFT/BigFoot over real TCP on 127.0.0.1 (in one event loop)."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest

from nodes.block import Block
from nodes.consensus.events import Broadcast
from nodes.consensus.messages import Proposal
from nodes.driver import AsyncDriver
from nodes.node import Node
from nodes.reconfig import ReconfigCommand
from nodes.wire import encode
from tests.unit.nodes.cluster import Cluster, assert_prefix_consistent, make_genesis


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _load(cluster: Cluster, seconds: float, per_tick: int = 5) -> None:
    t0 = time.time()
    while time.time() - t0 < seconds:
        cluster.submit(per_tick)
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("protocol", ["pbft", "bigfoot"])
def test_f_crashed_nodes_keep_safety_and_progress(tmp_path: Path, n: int, protocol: str) -> None:
    async def body() -> None:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, n, protocol))
        f = (n - 1) // 3
        crashed = tuple(f"v{i}" for i in range(1, 1 + f))  # includes proposers of heights 1..f
        try:
            await cluster.start(skip=crashed)
            await _load(cluster, 1.0)
            await cluster.wait_height(4, 15)
            chains = cluster.chains()
            blocks = list(cluster.nodes["v0"].ledger.iter_blocks())
        finally:
            await cluster.stop()
        assert_prefix_consistent(chains)
        assert min(len(c) for c in chains.values()) >= 4
        # The sensor data in the blocks themselves shows who was offline.
        records = [b.prev_record for b in blocks if b.prev_record is not None]
        assert records
        for rec in records:
            assert set(crashed) <= set(rec["silent"])
            voters = {v["validator"] for v in rec["votes"]}
            assert voters.isdisjoint(crashed) and len(voters) >= n - f
        assert all(b.prev_cert is not None for b in blocks[1:])

    run(body())


class EquivocatingDriver(AsyncDriver):
    """Byzantine proposer: sends its block to half the validators and another to the rest.

    It is a driver that disobeys its core: the core's own proposal goes to the first
    half, a second signed block for the same (height, round) to the others."""

    def _execute(self, eff: Any) -> Any:
        if type(eff) is not Broadcast or type(eff.msg) is not Proposal:
            return super()._execute(eff)
        p, node = eff.msg, self.hooks
        block = p.block
        assert isinstance(node, Node)
        other = Block.create(
            node.key,
            block.height,
            block.prev_hash,
            block.protocol,
            block.proposer,
            block.proposed_at + 1e-3,
            block.txs[: len(block.txs) // 2],
            (),
            block.prev_cert,
            block.prev_record,
        )
        twin = Proposal(p.height, p.round, p.sender, other, p.justification)
        twin = Proposal(p.height, p.round, p.sender, other, p.justification, self.auth.sign(twin))
        peers = sorted(node.transport.links)
        half = len(peers) // 2
        for i, peer in enumerate(peers):
            node.transport.send(peer, encode(p if i < half else twin))
        node.counters["equivocated"] += 1
        return None


class ByzantineNode(Node):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        d = self.driver
        self.driver = EquivocatingDriver(d.me, d.core, d.transport, d.ledger, d.auth, self)


@pytest.mark.parametrize("n", [4, 7])
def test_equivocating_proposer_cannot_fork(tmp_path: Path, n: int) -> None:
    async def body() -> None:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, n, "pbft"))
        try:
            await cluster.start(overrides={"v1": ByzantineNode})
            await _load(cluster, 0.5)
            await cluster.wait_height(n + 3, 20)  # the byzantine node proposed at least twice
            chains = cluster.chains()
            equivocations = cluster.nodes["v1"].counters["equivocated"]
        finally:
            await cluster.stop()
        assert equivocations >= 2
        honest = {k: v for k, v in chains.items() if k != "v1"}
        assert_prefix_consistent(honest)

    run(body())


@pytest.mark.parametrize("n", [4, 7])
@pytest.mark.parametrize("protocol", ["pbft", "bigfoot"])
def test_delayed_and_reordered_messages(tmp_path: Path, protocol: str, n: int) -> None:
    rng = random.Random(7)

    def delay(src: str, dst: str, msg: dict[str, Any]) -> float:
        return rng.uniform(0.0, 0.08)  # per message: reorders freely

    async def body() -> None:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, n, protocol), delay=delay)
        try:
            await cluster.start()
            await _load(cluster, 1.0)
            await cluster.wait_height(6, 20)
            chains = cluster.chains()
        finally:
            await cluster.stop()
        assert_prefix_consistent(chains)

    run(body())


def _records(path: Path) -> list[dict[str, Any]]:
    import json

    out = []
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row["kind"] == "block":
            out.append(row["record"])
    return out


@pytest.mark.parametrize("n", [4, 7])
def test_protocol_switch_mid_run(tmp_path: Path, n: int) -> None:
    async def body() -> None:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, n, "pbft"))
        try:
            await cluster.start()
            await _load(cluster, 0.4)
            await cluster.wait_height(3, 10)
            # To one node only: it forwards the command to the other producers' pools.
            cmd = ReconfigCommand.create(cluster.twin_key, "sw1", "bigfoot", None, time.time())
            ack1 = await _rpc(cluster.nodes["v0"].transport.port, cmd.to_wire())
            await _load(cluster, 1.0)
            back_at = max(node.ledger.height for node in cluster.nodes.values()) + 4
            cmd2 = ReconfigCommand.create(cluster.twin_key, "sw2", "pbft", back_at, time.time())
            ack2 = await _rpc(cluster.nodes["v2"].transport.port, cmd2.to_wire())
            await _load(cluster, 0.5)
            await cluster.wait_height(back_at + 3, 15)
            chains = cluster.chains()
            protos = {
                vid: [b.protocol for b in node.ledger.iter_blocks()]
                for vid, node in cluster.nodes.items()
            }
        finally:
            await cluster.stop()
        assert ack1["ok"] and ack2["ok"], (ack1, ack2)
        assert_prefix_consistent(chains)
        ref = protos["v0"]
        to_bf = ref.index("bigfoot")
        assert set(ref[:to_bf]) == {"pbft"}
        assert set(ref[to_bf : back_at - 1]) == {"bigfoot"}
        assert set(ref[back_at - 1 :]) == {"pbft"}, "second switch not at its requested height"
        for seq in protos.values():
            k = min(len(seq), len(ref))
            assert seq[:k] == ref[:k]
        records = _records(tmp_path / "telemetry" / "v0.jsonl")
        times = [r["committed_at"] for r in records]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        timeout = cluster.genesis.timing.round_timeout
        assert max(gaps) < timeout, f"stall of {max(gaps):.2f}s around a switch"
        assert not any(r["round_changes"] for r in records)
        assert any(r["fast_path"] for r in records if r["protocol"] == "bigfoot")
        assert not any(r["fast_path"] for r in records if r["protocol"] == "pbft")

    run(body())


async def _rpc(port: int, cmd: dict[str, Any]) -> dict[str, Any]:
    from nodes.transport import encode, read_frame

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode({"t": "reconfig", "cmd": cmd}))
    reply = await asyncio.wait_for(read_frame(reader), 5)
    writer.close()
    assert reply is not None
    return reply


@pytest.mark.parametrize("protocol", ["pbft", "bigfoot"])
def test_liveness_after_proposer_crash(tmp_path: Path, protocol: str) -> None:
    async def body() -> None:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, 4, protocol))
        try:
            await cluster.start()
            await cluster.wait_height(2, 10)
            # Crash the proposer of the next height right after a commit.
            h = cluster.nodes["v0"].ledger.height
            while cluster.nodes["v0"].ledger.height == h:
                await asyncio.sleep(0.001)
            nxt = cluster.nodes["v0"].ledger.height + 1
            core = cluster.nodes["v0"].core
            while core.height != nxt:  # its proposer is known once the core is there
                await asyncio.sleep(0.001)
            victim = core.proposer(nxt, 0)
            await cluster.crash(victim)
            t0 = time.time()
            waited = await cluster.wait_height(nxt, 10)
            chains = cluster.chains()
        finally:
            await cluster.stop()
        bound = 2 * cluster.genesis.timing.round_timeout
        print(f"{protocol}: next block {waited:.3f}s after the proposer crashed (bound {bound}s)")
        assert waited < bound, f"next block after {waited:.2f}s > two round timeouts {bound}s"
        assert time.time() - t0 >= waited
        assert_prefix_consistent(chains)

    run(body())


@pytest.mark.parametrize("protocol", ["pbft", "bigfoot"])
def test_round_changes_under_slow_links_keep_safety(tmp_path: Path, protocol: str) -> None:
    """Some links slower than a round timeout: proposals and votes straddle round
    changes, so prepared certificates and re-proposals (select_value) get exercised."""
    rng = random.Random(3)

    def delay(src: str, dst: str, msg: dict[str, Any]) -> float:
        if src == "v1" or (src == "v2" and dst == "v3"):
            return rng.uniform(0.3, 0.9)  # round timeout is 0.6 s
        return rng.uniform(0.0, 0.05)

    async def body() -> None:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, 4, protocol), delay=delay)
        try:
            await cluster.start()
            await _load(cluster, 2.0)
            await cluster.wait_height(8, 30)
            chains = cluster.chains()
            rounds = sum(n.telemetry.counts.get("round_change", 0) for n in cluster.nodes.values())
            reproposed = sum(n.counters["reproposals"] for n in cluster.nodes.values())
        finally:
            await cluster.stop()
        assert_prefix_consistent(chains)
        assert rounds > 0, "the scenario did not force any round change"
        print(f"{protocol}: {rounds} round changes, {reproposed} forced re-proposals")

    run(body())
