"""Issue 17's combined fault, in process: n = 7, one validator behind a thin long link
(one 3 Mbit/s access link shared by all its peers in each direction, as in Mininet;
75 ms one way), another cut off for 5 s. Commits go on during the cut, resume within
two round timeouts of the heal, and the thin-link validator keeps up. (In Mininet the
thin-link validator still falls behind after the heal in most runs; this model has no
TCP, which is where the difference must be: see the issue 17 note.)"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from tests.unit.nodes.cluster import Cluster, assert_prefix_consistent, make_genesis
from tests.unit.nodes.test_safety import _load, _records

CUT_AT, CUT_FOR, AFTER = 2.0, 5.0, 6.0
THIN_BYTES_PER_S = 3e6 / 8
ROUND_TIMEOUT = 1.0


def test_commits_continue_through_a_cut_and_resume_after_it(tmp_path: Path) -> None:
    t0: list[float] = []
    busy: dict[str, float] = {}

    def delay(src: str, dst: str, msg: dict[str, Any]) -> float:
        now = time.time()
        if t0 and t0[0] + CUT_AT <= now < t0[0] + CUT_AT + CUT_FOR and "v5" in (src, dst):
            return 1e6  # cut off: never delivered
        if "v6" in (src, dst):  # one access link, shared by all its peers, each way
            way = "in" if dst == "v6" else "out"
            start = max(now, busy.get(way, now))
            busy[way] = done = start + len(json.dumps(msg)) / THIN_BYTES_PER_S
            return done - now + 0.075
        return 0.002

    async def body() -> dict[str, int]:
        genesis = make_genesis(tmp_path, 7, "pbft", round_timeout=ROUND_TIMEOUT,
                               max_round_timeout=4 * ROUND_TIMEOUT)
        cluster = Cluster(tmp_path, genesis, delay=delay)
        try:
            await cluster.start()
            t0.append(time.time())
            await _load(cluster, CUT_AT + CUT_FOR + AFTER)
            assert_prefix_consistent(cluster.chains())
            return {v: n.ledger.durable_height for v, n in cluster.nodes.items()}
        finally:
            await cluster.stop()

    heights = asyncio.run(asyncio.wait_for(body(), 60))
    times = [r["committed_at"] - t0[0] for r in _records(tmp_path / "telemetry" / "v0.jsonl")]
    heal = CUT_AT + CUT_FOR
    during = [t for t in times if CUT_AT + 1 < t < heal]
    assert len(during) >= 5, f"only {len(during)} commits during the cut"
    after = [heal] + [t for t in times if t >= heal]
    gap = max(b - a for a, b in zip(after, after[1:], strict=False))
    assert gap < 2 * ROUND_TIMEOUT, f"a {gap:.2f} s commit gap after the heal"
    assert max(heights.values()) - min(heights.values()) <= 2, heights
