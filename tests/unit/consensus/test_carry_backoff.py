"""Back-off carried across heights (issue 17): behind a path slower than the base
timeout, a height that needed a round change starts the next one with the timer that
worked, and quick commits bring it back down one step each."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nodes.consensus.events import Commit, StartTimer
from tests.unit.consensus.harness import CONFIG, MemoryCluster, check_safety
from tests.unit.consensus.plan import FaultPlan


def _run(carry: bool) -> tuple[MemoryCluster, list[tuple[int, int]], dict[int, float]]:
    """v0 crashed for good: each height it is round 0's proposer needs round 1."""
    plan = FaultPlan(3, protocol="pbft", duration=12.0, gst=0.0, crash=(0, 0.0, None))
    cluster = MemoryCluster(plan, config=replace(CONFIG, proposer_pool=False,
                                                 carry_backoff=carry))
    cluster.effects = []
    cluster.run()
    check_safety(cluster.commits)
    rounds = [(e.block.height, e.cert.round) for _, me, e in cluster.effects
              if me == 1 and type(e) is Commit]
    timers: dict[int, float] = {}
    for _, me, e in cluster.effects:  # the first round-0 timer of each height
        if me == 1 and type(e) is StartTimer and e.round == 0 and e.kind == "round":
            timers.setdefault(e.height, e.delay)
    return cluster, rounds, timers


@pytest.mark.parametrize("carry", [True, False])
def test_the_next_heights_timer_follows_the_round_the_last_one_needed(carry: bool) -> None:
    _, rounds, timers = _run(carry)
    t = CONFIG.timeouts
    level = 0
    checked = 0
    for height, round_ in rounds:
        nxt = height + 1
        if nxt not in timers:
            continue
        if carry:
            level = level + 1 if round_ else max(level - 1, 0)
        assert timers[nxt] == pytest.approx(t.round(level)), (height, round_, level)
        checked += 1
    assert checked >= 5
    assert any(r for _, r in rounds), "no height needed a round change"
    if carry:
        assert any(timers[h] > t.round(0) for h in timers), "the back-off was never carried"
