"""Differential test: one fault plan, three drivers of the core, the same chains.

The in-memory driver, the validators' asyncio driver (real loop in virtual time, JSON
frames, SQLite ledgers, restarts from them) and the twin's simulator driver get the
same plan (losses, long delays, a partition, a crash and a restart, a protocol switch)
and must commit the same blocks, at the same rounds, paths and times, per validator.
A driver that carries a rule of its own shows up as a difference.
"""

from __future__ import annotations

from typing import Any

import pytest

from nodes.consensus.events import ROUND_TIMER, StartTimer
from tests.unit.consensus import drivers
from tests.unit.consensus.harness import CommitRow, check_safety
from tests.unit.consensus.plan import FaultPlan
from twin.simnode import SimNode

PLANS = {
    "pbft": FaultPlan(13, protocol="pbft", gst=3.0, drop=0.05, slow=0.05,
                      partition=(0.2, 0.8, frozenset({3})), crash=(1, 2.9, 3.6)),
    "bigfoot": FaultPlan(11, protocol="bigfoot", gst=3.0, drop=0.05, slow=0.05,
                         partition=(0.2, 0.8, frozenset({0})), crash=(2, 3.2, 3.9)),
    "pbft_to_bigfoot": FaultPlan(13, protocol="pbft", gst=2.5, drop=0.05, slow=0.1,
                                 crash=(3, 1.0, 2.0), switch_at=3),
    "bigfoot_to_pbft": FaultPlan(14, protocol="bigfoot", gst=2.5, drop=0.05, slow=0.1,
                                 partition=(0.2, 1.2, frozenset({1, 2})), switch_at=4),
    "crashed_for_good": FaultPlan(15, protocol="bigfoot", duration=10.0, gst=2.0, drop=0.1,
                                  crash=(0, 0.5, None)),
    "n7": FaultPlan(16, n=7, protocol="pbft", gst=2.5, drop=0.1, slow=0.1,
                    partition=(0.3, 1.5, frozenset({4, 5})), crash=(6, 0.6, 1.8),
                    switch_at=5),
}


def differences(ref: dict[str, list[CommitRow]], got: dict[str, list[CommitRow]]) -> list[str]:
    out = []
    for v in ref:
        a, b = ref[v], got.get(v, [])
        if a != b:
            i = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
            out.append(f"{v}: {len(a)} vs {len(b)} blocks, first difference at index {i}: "
                       f"{a[i:i + 1]} vs {b[i:i + 1]}")
    return out


def run_all(plan: FaultPlan, ed25519: bool = False) -> dict[str, dict[str, list[CommitRow]]]:
    return {name: fn(plan, ed25519) for name, fn in drivers.DRIVERS.items()}


def assert_same(results: dict[str, dict[str, list[CommitRow]]]) -> None:
    ref = results["memory"]
    check_safety(ref)
    for name, got in results.items():
        diff = differences(ref, got)
        assert not diff, f"{name} driver differs from the in-memory driver:\n" + "\n".join(diff)


@pytest.mark.parametrize("case", sorted(PLANS))
def test_three_drivers_commit_the_same_chains(case: str) -> None:
    plan = PLANS[case]
    results = run_all(plan)
    assert_same(results)
    rows = [r for chain in results["memory"].values() for r in chain]
    assert len(rows) > 8 * plan.n, "the plan committed too little to compare"
    # The plan exercised what it is about: round changes, and catching up after faults.
    assert any(r[3] > 0 for r in rows), "no block committed after a round change"
    if plan.crash is not None and plan.crash[2] is not None:
        assert any(r[6] for r in results["memory"][f"v{plan.crash[0]}"]), "no catch-up"
    protocols = {r[2] for r in rows}
    if plan.switch_at is not None:
        assert protocols == {"pbft", "bigfoot"}
        for chain in results["memory"].values():
            switch = [r[2] for r in chain]
            k = plan.switch_at + 2  # reconfig_delay: effective two blocks after it commits
            assert set(switch[: k - 1]) <= {plan.protocol}
            assert set(switch[k - 1:]) <= {plan.other_protocol()}
    else:
        assert protocols == {plan.protocol}


@pytest.mark.parametrize("seed", range(100, 106))
def test_three_drivers_agree_on_drawn_plans(seed: int) -> None:
    assert_same(run_all(FaultPlan.draw(seed)))


def test_three_drivers_agree_with_ed25519() -> None:
    """The validators' real signatures (not the fast stand-in) change nothing."""
    assert_same(run_all(PLANS["pbft_to_bigfoot"], ed25519=True))


@pytest.mark.long
@pytest.mark.parametrize("seed", range(200, 300))
def test_three_drivers_agree_on_many_plans(seed: int) -> None:
    assert_same(run_all(FaultPlan.draw(seed, n=4 if seed % 4 else 7)))


class SlowTimerNode(SimNode):
    """A twin driver with a rule of its own: the twin's old round-timer doubling."""

    def run(self, event: Any) -> None:
        core = self.core
        assert core is not None
        handle = core.handle

        def doubled(ev: Any, now: float) -> list[Any]:
            return [StartTimer(e.kind, e.height, e.round, 1.0 * 2 ** e.round)
                    if type(e) is StartTimer and e.kind == ROUND_TIMER else e
                    for e in handle(ev, now)]

        core.handle = doubled  # type: ignore[method-assign,assignment]
        try:
            super().run(event)
        finally:
            del core.handle


def test_a_rule_in_one_driver_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = PLANS["pbft_to_bigfoot"]  # its round changes go past round 1, where rules differ
    ref = drivers.run_memory(plan)
    monkeypatch.setattr(drivers, "SimNode", SlowTimerNode)
    diff = differences(ref, drivers.run_twin(plan))
    assert diff, "a twin driver with its own timeout rule went unnoticed"
