"""The proposer pool (issue 17): validators the chain last heard from propose first.

Found in emulation (the n=7 fault suite): two validators cut off, consecutive in the
round robin, were the round 0 and round 1 proposers of a height: the five others waited
out two round timeouts each time that pair's turn came, during the partition and at the
heal (2.05-2.63 s to the first block after it, against a bound of 2 round timeouts).
With the order taken from the certificate the tip block carries, a validator missing
from it proposes only after every validator that voted: the pair costs nothing once it
has dropped out of one certificate.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from nodes.consensus import Committee, NullAuth
from tests.unit.consensus.harness import CONFIG, MemoryCluster, check_safety
from tests.unit.consensus.plan import FaultPlan

HEAL = 12.0


def test_the_order_puts_the_pool_first_and_keeps_every_validator() -> None:
    c = Committee(list(range(7)), NullAuth())
    assert c.proposer_order(9, None) == (2, 3, 4, 5, 6, 0, 1)  # plain: from 9 % 7
    assert c.proposer_order(9, frozenset({0, 1, 4, 5, 6})) == (4, 5, 6, 0, 1, 2, 3)
    assert c.proposer_order(9, frozenset(range(7))) == c.proposer_order(9, None)
    assert c.proposer_order(9, frozenset({"stranger"})) == c.proposer_order(9, None)


class _Calm(FaultPlan):
    """Every message within 1-50 ms, except across the partition before the heal."""

    def delay(self, src: int, dst: int, msg: Any, now: float) -> float | None:
        p = self.partition
        if p is not None and p[0] <= now < p[1] and ((src in p[2]) != (dst in p[2])):
            return None
        return 0.001 + 0.049 * ((src * 7 + dst * 3 + int(now * 1000)) % 97) / 97


def _longest_gap(pair: frozenset[int], pool: bool) -> tuple[float, int]:
    """The longest gap between two commits of a validator outside the pair, from 5 s
    into the partition (the pool needs the first two heights to see the pair gone) to
    6 s after the heal; and how many heights were committed."""
    plan = _Calm(seed=1, n=7, duration=HEAL + 6.0, gst=0.0,
                 partition=(2.0, HEAL, pair))
    cluster = MemoryCluster(plan, config=replace(CONFIG, proposer_pool=pool)).run()
    check_safety(cluster.commits)
    gaps = []
    for v in set(range(7)) - pair:
        times = [r[5] for r in cluster.commits[v] if r[5] >= 7.0]
        gaps += [b - a for a, b in zip(times, times[1:], strict=False)]
    for v in pair:  # the cut-off pair catches up after the heal
        assert len(cluster.commits[v]) >= len(cluster.commits[0]) - 2
    return max(gaps), len(cluster.commits[0])


def test_a_cut_off_pair_of_consecutive_proposers_stops_costing_round_timeouts() -> None:
    for first in range(7):
        pair = frozenset({first, (first + 1) % 7})
        (with_pool, n_pool), (plain, n_plain) = _longest_gap(pair, True), \
            _longest_gap(pair, False)
        # the plain round robin waits out round 0 (1 s) and round 1 (1.5 s) whenever
        # the pair's turn comes; the pool, once the pair is out of a certificate, never,
        # also not at the heal (measured: 104-127 heights against 62-78)
        assert plain > 2.0 * CONFIG.timeouts.base, (pair, plain)
        assert with_pool < CONFIG.timeouts.base, (pair, with_pool)
        assert n_pool > 1.3 * n_plain, (pair, n_pool, n_plain)
