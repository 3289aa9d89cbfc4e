"""Bad input at a live node: rejected with a reason and counted, never a crash."""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path
from typing import Any

from nodes.block import Block, seal_bytes
from nodes.crypto import KeyPair
from nodes.reconfig import ReconfigCommand
from nodes.transport import encode, read_frame
from nodes.tx import Transaction
from nodes.wire import message_bytes
from tests.unit.nodes.cluster import Cluster, assert_prefix_consistent, make_genesis


async def _rpc(port: int, msgs: list[dict[str, Any]], replies: int) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for m in msgs:
        writer.write(encode(m))
    await writer.drain()
    out = [await asyncio.wait_for(read_frame(reader), 5) for _ in range(replies)]
    writer.close()
    return [o for o in out if o is not None]


def test_client_gets_reasons_and_forgeries_are_counted(tmp_path: Path) -> None:
    async def body() -> None:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, 4, max_tx_bytes=100))
        await cluster.start()
        try:
            node = cluster.nodes["v0"]
            port = node.transport.port
            key = cluster.client_key
            good = Transaction.create(key, "client0", "ok1", time.time(), b"x")
            big = Transaction.create(key, "client0", "big", time.time(), b"x" * 101)
            forged = Transaction.create(KeyPair.generate(), "client0", "f", time.time(), b"")
            stranger = Transaction.create(key, "mallory", "m", time.time(), b"")
            batch = [
                good.to_wire(),
                good.to_wire(),
                big.to_wire(),
                forged.to_wire(),
                stranger.to_wire(),
                {"id": 5},
            ]
            (reply,) = await _rpc(port, [{"t": "txs", "txs": batch}], 1)
            assert reply["ok"] == 1
            reasons = [(a["ok"], a.get("reason")) for a in reply["rejected"]]
            assert reasons == [
                (False, "duplicate"),
                (False, "oversized"),
                (False, "bad_signature"),
                (False, "unknown_client"),
                (False, "malformed"),
            ]
            bad_cmd = ReconfigCommand.create(KeyPair.generate(), "s", "bigfoot", None,
                                             time.time())
            (ack,) = await _rpc(port, [{"t": "reconfig", "cmd": bad_cmd.to_wire()}], 1)
            assert ack["ok"] is False and ack["reason"] == "bad_signature"

            # Forged consensus traffic: unknown sender, wrong key, garbage, non-JSON frame.
            h = node.ledger.height + 1
            fake = KeyPair.generate()
            forged_vote = {
                "t": "prepare",
                "from": "v1",
                "h": h,
                "r": 0,
                "hash": "ab",
                "sig": fake.sign(seal_bytes("prepare", h, 0, "ab")),
            }
            unknown = {"t": "commit", "from": "eve", "h": h, "r": 0, "hash": "ab", "sig": "00"}
            sync = {"t": "sync_req", "from": "v2", "start": 1}
            sync["sig"] = fake.sign(message_bytes(sync))
            garbage = {"t": "proposal", "from": "v1", "h": h, "r": 0, "block": {"x": 1}, "sig": "1"}
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for m in (forged_vote, unknown, sync, garbage, {"t": "nonsense"}):
                writer.write(encode(m))
            writer.write(struct.pack(">I", 3) + b"{{{")
            await writer.drain()
            await asyncio.sleep(0.3)
            writer.close()
            # Correctly signed by a validator, but structurally wrong round changes.
            v1 = KeyPair.load(tmp_path / "keys" / "v1.key")
            weird: list[dict[str, Any]] = [
                {"prepared": [1, 2], "voted": None, "blocks": {}},
                {"prepared": {"round": 0, "hash": ["x"], "votes": []}, "voted": None, "blocks": {}},
                {"prepared": None, "voted": {"round": 0, "hash": {}}, "blocks": {}},
                {"prepared": None, "voted": None, "blocks": {"ab": {"header": 1}}},
                {"prepared": None, "voted": None, "blocks": []},
            ]
            while node.core.applying is not None:  # between a commit and its fsync the
                await asyncio.sleep(0.001)  # core ignores its own height's messages
            now_h = node.core.height  # no await below: the height cannot move meanwhile
            for i, extra in enumerate(weird):
                rc = {"t": "rc", "from": "v1", "h": now_h, "r": 5 + i, **extra}
                rc["sig"] = v1.sign(message_bytes(rc))
                node._on_frame(rc, None)  # type: ignore[arg-type]
            c = node.counters
            assert c["rejected_rc"] == len(weird)
            assert c["errors"] == 0
            assert c["rejected_prepare"] >= 1 and c["rejected_consensus"] >= 1
            assert c["rejected_sync"] >= 1 and c["rejected_proposal"] >= 1
            assert c["rejected_message"] >= 1 and node.transport.frame_errors == 1
            # ... and the chain keeps growing with the good transaction in it.
            start = node.ledger.height
            await cluster.wait_height(start + 3, 10)
            ids = {tx.id for b in node.ledger.iter_blocks() for tx in b.txs}
            assert "ok1" in ids
            assert_prefix_consistent(cluster.chains())
        finally:
            await cluster.stop()

    asyncio.run(asyncio.wait_for(body(), 60))


def test_each_transaction_is_verified_once_per_node(tmp_path: Path) -> None:
    """Duplicates are refused before verifying; a transaction checked inside a proposal is
    not verified again when the client's copy arrives; a forged copy is still checked."""

    async def body() -> None:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, 4))
        node = cluster.make_node("v0")
        try:
            pooled, proposed = cluster.tx(), cluster.tx()
            assert node._tx_ack(pooled.to_wire())["ok"]
            count = node.verifier.verified
            assert node._tx_ack(pooled.to_wire())["reason"] == "duplicate"
            assert node.verifier.verified == count  # refused by id, no signature check

            proposer = KeyPair.load(tmp_path / "keys" / "v1.key")
            block = Block.create(
                proposer, 1, node.ledger.tip_hash, "pbft", "v1", time.time(), [pooled, proposed]
            )
            node.validate_block(block)
            assert node.verifier.verified == count + 2  # block signature + the new tx only
            assert node._tx_ack(proposed.to_wire())["ok"]
            assert node.verifier.verified == count + 2

            forged = {**cluster.tx().to_wire(), "sig": proposed.sig}
            forged_pooled = {**proposed.to_wire(), "id": "fresh", "sig": pooled.sig}
            assert node._tx_ack(forged)["reason"] == "bad_signature"
            assert node._tx_ack(forged_pooled)["reason"] == "bad_signature"
            assert node.verifier.verified == count + 4
        finally:
            await node.stop()

    asyncio.run(asyncio.wait_for(body(), 30))
