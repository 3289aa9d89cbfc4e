"""Round synchronisation after GST (issue 17), on the in-memory driver.

The desynchronisation found in Mininet, reduced: n = 7 (f = 2, quorum 5), two
validators down for good, two others started 10 s before the last three. Each group
times out on its own; once both sit at the capped timeout (4 s) the early pair is
three rounds ahead, and forever: the late three see only two validators ahead (fewer
than f + 1, so they may not follow), the early two never have five round changes for
one round. With the rule that a validator enters a round only on a quorum of round
changes for it (and waits, re-sending its own, until then), the five meet in one round
and commit. The network is fine after GST (every message within 10 ms); nothing but the
start times is unusual.
"""

from __future__ import annotations

import heapq
from typing import Any

from tests.unit.consensus.harness import MemoryCluster, check_safety
from tests.unit.consensus.plan import FaultPlan

LATE = 10.0
CAPPED = 4.0


class _Network(FaultPlan):
    def delay(self, src: int, dst: int, msg: Any, now: float) -> float | None:
        return 0.01


class _StaggeredCluster(MemoryCluster):
    """Validators start at the given times (None: never)."""

    def __init__(self, plan: FaultPlan, starts: dict[int, float | None]) -> None:
        super().__init__(plan)
        self.starts = starts

    def run(self, until: Any = None) -> MemoryCluster:
        for i, t in self.starts.items():
            if t is not None:
                self.at(t, self.start, i)
        while self._heap and self._heap[0][0] <= self.plan.duration:
            t, _, fn, args = heapq.heappop(self._heap)
            self.now = t
            fn(*args)
        return self


def _run(protocol: str) -> _StaggeredCluster:
    plan = _Network(1, n=7, protocol=protocol, duration=LATE + 3 * CAPPED + 1.0, gst=0.0)
    starts: dict[int, float | None] = {0: 0.0, 1: 0.0, 2: LATE, 3: LATE, 4: LATE,
                                       5: None, 6: None}
    return _StaggeredCluster(plan, starts).run()


def test_validators_started_apart_meet_in_one_round_and_commit() -> None:
    for protocol in ("pbft", "bigfoot"):
        cluster = _run(protocol)
        check_safety(cluster.commits)
        live = [cluster.commits[i] for i in range(5)]
        assert all(rows for rows in live), (
            f"{protocol}: no commit within three capped round timeouts of the last start; "
            f"heights {[len(r) for r in live]}")
        first = min(rows[0][5] for rows in live)
        assert first < LATE + 3 * CAPPED, first
