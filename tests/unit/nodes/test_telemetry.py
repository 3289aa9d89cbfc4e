"""Telemetry lines and the per-block sensor stream to a twin endpoint."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from nodes.config import Timing
from nodes.driver import core_config
from nodes.sensor import BlockSensorRecord
from tests.unit.nodes.cluster import Cluster, make_genesis


def test_round_timeouts_are_capped() -> None:
    t = Timing(round_timeout=1.0, round_backoff=2.0, max_round_timeout=5.0)
    timeouts = core_config(t).timeouts
    values = [timeouts.round(r) for r in range(0, 10_000, 7)]
    assert values[0] == 1.0 and max(values) == 5.0


def test_twin_endpoint_and_jsonl_get_one_record_per_block(tmp_path: Path) -> None:
    received: list[dict] = []

    async def twin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            received.append(json.loads(line))

    async def body() -> int:
        server = await asyncio.start_server(twin, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cluster = Cluster(tmp_path, make_genesis(tmp_path, 4))
        cluster.twin_endpoints["v2"] = f"127.0.0.1:{port}"
        try:
            await cluster.start()
            cluster.submit(20)
            await cluster.wait_height(4, 10)
            height = cluster.nodes["v2"].ledger.height
            await asyncio.sleep(0.2)
        finally:
            await cluster.stop()
            server.close()
        return height

    height = asyncio.run(asyncio.wait_for(body(), 30))
    records = [BlockSensorRecord.from_dict(r) for r in received]
    assert [r.height for r in records][:height] == list(range(1, height + 1))
    assert all(r.recorder == "v2" and r.protocol == "pbft" for r in records)
    assert sum(r.tx_count for r in records) == 20
    assert all(r.committed_at >= r.proposal_received_at > 0 for r in records)
    lines = [json.loads(x) for x in (tmp_path / "telemetry" / "v2.jsonl").read_text().splitlines()]
    kinds = {x["kind"] for x in lines}
    assert {"start", "block", "vote"} <= kinds
    blocks = [x["record"] for x in lines if x["kind"] == "block"]
    assert len(blocks) == len(records)


def test_dropped_messages_are_recorded_with_their_reason_rate_limited(tmp_path: Path) -> None:
    """Why a laggard waited (issue 17: a sync answer not sent while the link to the asker
    is busy) must be visible in telemetry, not only counted; a flood stays a few lines."""
    async def body() -> None:
        cluster = Cluster(tmp_path, make_genesis(tmp_path, 4))
        try:
            await cluster.start()
            node = cluster.nodes["v0"]
            for _ in range(500):
                node.log("dropped", {"reason": "sync answer: link to asker busy", "from": "v3"})
            node.log("dropped", {"reason": "buffer full", "from": "v1"})
            assert node.counters["dropped_messages"] == 501
        finally:
            await cluster.stop()

    asyncio.run(asyncio.wait_for(body(), 30))
    lines = [json.loads(x) for x in (tmp_path / "telemetry" / "v0.jsonl").read_text().splitlines()]
    dropped = [x for x in lines if x["kind"] == "dropped"]
    assert [(x["reason"], x["peer"]) for x in dropped] == [
        ("sync answer: link to asker busy", "v3"), ("buffer full", "v1")]
