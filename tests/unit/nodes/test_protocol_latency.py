"""BigFoot vs PBFT, measured: faster with everyone up, slower with one validator down.

Every message gets the same injected one-way delay so link latency dominates CPU time;
latency is per transaction, commit time - submit time, from the workload client.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from nodes.client import WorkloadClient
from tests.unit.nodes.cluster import Cluster, make_genesis

LINK_DELAY = 0.04


def _delay(src: str, dst: str, msg: dict[str, Any]) -> float:
    return LINK_DELAY


async def _mean_latency(folder: Path, protocol: str, down: tuple[str, ...]) -> tuple[float, float]:
    cluster = Cluster(folder, make_genesis(folder, 4, protocol, fast_path_timeout=0.15), _delay)
    await cluster.start(skip=down)
    try:
        targets = [("127.0.0.1", n.transport.port) for n in cluster.nodes.values()]
        client = WorkloadClient(
            "client0", cluster.client_key, targets, [(0.0, 150.0)], 3.0, payload_size=64, drain=3.0
        )
        result = await client.run()
        node = cluster.nodes["v0"]
        blocks = [b for b in node.ledger.iter_blocks()]
    finally:
        await cluster.stop()
    assert result.committed, "nothing committed"
    assert len(result.committed) == len(result.submitted)
    assert blocks and all(b.protocol == protocol for b in blocks)
    return float(result.latencies().mean()), float(np.median(result.latencies()))


def test_bigfoot_beats_pbft_when_all_up_and_loses_with_one_down(tmp_path: Path) -> None:
    async def body() -> dict[str, tuple[float, float]]:
        out = {}
        for protocol in ("pbft", "bigfoot"):
            for label, down in (("up", ()), ("down", ("v3",))):
                folder = tmp_path / f"{protocol}-{label}"
                out[f"{protocol}-{label}"] = await _mean_latency(folder, protocol, down)
        return out

    lat = asyncio.run(asyncio.wait_for(body(), 100))
    print({k: f"mean {m * 1000:.0f} ms, p50 {p * 1000:.0f} ms" for k, (m, p) in lat.items()})
    assert lat["bigfoot-up"][0] < lat["pbft-up"][0], lat
    assert lat["bigfoot-down"][0] > lat["pbft-down"][0], lat
