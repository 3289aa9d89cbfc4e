"""State transfer accepts only blocks with valid certificates from validators."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path

from nodes.crypto import KeyPair
from nodes.wire import sync_resp_bytes
from tests.unit.nodes.cluster import Cluster, assert_prefix_consistent, make_genesis


def test_forged_state_transfer_is_rejected_and_real_one_accepted(tmp_path: Path) -> None:
    async def body() -> None:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, 4))
        await cluster.start(skip=("v3",))
        try:
            cluster.submit(5)
            await cluster.wait_height(3, 10)
            source = cluster.nodes["v0"]
            rows = source.ledger.get_raw(1, 3)
            v1 = KeyPair.load(tmp_path / "keys" / "v1.key")

            def resp(blocks: list, key: KeyPair = v1, sender: str = "v1") -> dict:
                msg = {"t": "sync_resp", "from": sender, "blocks": blocks, "tip": 3}
                hashes = [b[0]["hash"] for b in blocks]
                msg["sig"] = key.sign(sync_resp_bytes(sender, 3, hashes))
                return msg

            weak = copy.deepcopy([list(r) for r in rows])
            weak[0][1]["votes"] = weak[0][1]["votes"][:2]  # below the 2f+1 quorum
            tampered = copy.deepcopy([list(r) for r in rows])
            tampered[0][0]["txs"] = (
                tampered[0][0]["txs"][:-1] if tampered[0][0]["txs"] else [cluster.tx().to_wire()]
            )
            stranger = KeyPair.generate()

            fresh = cluster.make_node("v3")  # empty ledger, no transport: nothing else feeds it
            fresh.driver.start()
            for bad in (resp(weak), resp(tampered), resp(rows, stranger), resp(rows, v1, "v2")):
                fresh._on_frame(bad, None)  # type: ignore[arg-type]
            assert fresh.ledger.height == 0
            assert fresh.counters["rejected_sync"] == 4 and fresh.counters["errors"] == 0
            fresh._on_frame(resp([list(r) for r in rows]), None)  # type: ignore[arg-type]
            for _ in range(1000):  # each block is announced once its fsync is done (the
                # disk here takes up to ~0.65 s for one now and then)
                if fresh.ledger.durable_height == 3:
                    break
                await asyncio.sleep(0.01)
            assert fresh.ledger.durable_height == 3
            assert fresh.ledger.hashes() == source.ledger.hashes()[:3]
            assert_prefix_consistent({**cluster.chains(), "v3": fresh.ledger.hashes()})
            await fresh.stop()
        finally:
            await cluster.stop()

    asyncio.run(asyncio.wait_for(body(), 30))
