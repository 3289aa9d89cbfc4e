"""Safety and liveness of the core over seeded random fault plans (in-memory driver).

Each plan (`plan.FaultPlan.draw`) loses, delays and partitions messages before a
random GST (partitions heal before it) and may crash a validator, for good (then it is
the one faulty validator) or with a restart from what it persisted; a third of the
plans switch protocols through a block; in 30% one validator sits behind a slow link
for the whole run (0.1-0.4 s more per message, after GST too) and must keep up.
Checked after every plan:
- safety: every validator's chain is a prefix of the longest, heights 1, 2, 3, ...
  (no two blocks at one height, on one validator or across validators);
- liveness: after GST, with at most f faulty and every message delivered within 50 ms
  (0.45 s to and from the thin-link validator),
  every correct validator commits at least two more blocks within 12 s (three capped
  round timeouts: one round whose messages were lost, one with a crashed proposer,
  one that commits).
"""

from __future__ import annotations

import pytest

from tests.unit.consensus.harness import MemoryCluster, check_safety
from tests.unit.consensus.plan import FaultPlan

AFTER_GST = 12.0


def run_plan(seed: int, n: int) -> tuple[FaultPlan, MemoryCluster]:
    plan = FaultPlan.draw(seed, n=n)
    plan.duration = plan.gst + AFTER_GST
    faulty = plan.faulty()
    at_gst: list[int] = []

    def live(c: MemoryCluster) -> bool:
        if c.now < plan.gst:
            return False
        if not at_gst:
            at_gst.append(max(len(rows) for rows in c.commits.values()))
        return all(len(rows) >= at_gst[0] + 2 for i, rows in c.commits.items()
                   if i not in faulty)

    cluster = MemoryCluster(plan).run(until=live)
    check_safety(cluster.commits)
    assert live(cluster), (
        f"plan {plan}: after GST the correct validators did not all commit two more "
        f"blocks within {AFTER_GST} s: heights {[len(r) for r in cluster.commits.values()]}")
    return plan, cluster


def _sweep(seeds: range, n: int) -> dict[str, int]:
    """Run the plans; count what they exercised (so the sweep cannot go trivial)."""
    seen = {"round_changes": 0, "synced": 0, "restarts": 0, "switched": 0, "partitions": 0,
            "thin": 0}
    for seed in seeds:
        plan, cluster = run_plan(seed, n)
        rows = [r for chain in cluster.commits.values() for r in chain]
        seen["round_changes"] += any(r[3] > 0 for r in rows)
        seen["synced"] += any(r[6] for r in rows)
        seen["restarts"] += plan.crash is not None and plan.crash[2] is not None
        seen["switched"] += len({r[2] for r in rows}) > 1
        seen["partitions"] += plan.partition is not None
        seen["thin"] += plan.thin is not None
    return seen


@pytest.mark.parametrize("n,seeds", [(4, range(0, 1200)), (7, range(0, 300))])
def test_safety_and_liveness_on_random_fault_plans(n: int, seeds: range) -> None:
    seen = _sweep(seeds, n)
    share = {k: v / len(seeds) for k, v in seen.items()}
    assert share["round_changes"] > 0.3 and share["synced"] > 0.1, share
    assert share["restarts"] > 0.2 and share["switched"] > 0.1 and share["partitions"] > 0.2, share
    assert share["thin"] > 0.2, share


@pytest.mark.long
@pytest.mark.parametrize("n,start", [(4, 10_000), (4, 20_000), (7, 30_000), (10, 40_000)])
def test_safety_and_liveness_long_run(n: int, start: int) -> None:
    _sweep(range(start, start + 5_000), n)
