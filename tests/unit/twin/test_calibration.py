"""Calibration (twin.calibration) with known answers: the model's own sensor records
from scenarios whose link speeds, latencies and workload are known."""

from __future__ import annotations

from collections import defaultdict

import pytest

from nodes.sensor import BlockSensorRecord
from twin.calibration import estimate
from twin.model import ChainModel, ModelConfig
from twin.scenarios import Interval, Outage, Scenario

SPEEDS = (4.0, 6.0, 8.0, 10.0, 12.0)
LATENCY = (10.0, 20.0, 30.0, 40.0, 50.0)


def records(sc: Scenario, until: float, protocol: str = "pbft",
            contention: bool = True) -> tuple[ChainModel, list[BlockSensorRecord]]:
    m = ChainModel(sc, ModelConfig(records="all", contention=contention), protocol)
    m.run_until(until)
    return m, m.records


def last_heights(recs: list[BlockSensorRecord], n: int) -> list[BlockSensorRecord]:
    by: dict[int, list[BlockSensorRecord]] = defaultdict(list)
    for r in recs:
        by[r.height].append(r)
    return [r for h in sorted(by)[-n:] for r in by[h]]


@pytest.mark.parametrize("protocol", ["pbft", "bigfoot"])
def test_speeds_latencies_and_workload_with_contention(protocol):
    """With sender contention every speed shows, the fastest in its own copies' spacing."""
    sc = Scenario("cal", 3, 5, 40.0, LATENCY, (Interval(0, 40, 120.0, 800, SPEEDS),))
    m, recs = records(sc, 40.0, protocol)
    est = estimate(recs, m.cfg)
    for i, (s, lat) in enumerate(zip(SPEEDS, LATENCY, strict=True)):
        assert est.link_mbps[f"n{i}"] == pytest.approx(s, rel=0.01)
        assert est.latency_ms[f"n{i}"] == pytest.approx(lat, abs=0.5)
    for (a, b), d in est.pair_latency_ms.items():  # a star: pairs are the sums
        assert d == pytest.approx(LATENCY[int(a[1:])] + LATENCY[int(b[1:])], abs=0.5)
    assert est.tx_size == pytest.approx(800)
    assert est.tps == pytest.approx(120, rel=0.1)
    assert all(est.up.values()) and all(n > 0 for n in est.speed_evidence.values())


def test_without_contention_the_fastest_node_is_the_second_fastest():
    """No timing shows the fastest link then; the estimate is its behavioural equal."""
    sc = Scenario("cal", 3, 5, 40.0, LATENCY, (Interval(0, 40, 120.0, 800, SPEEDS),))
    m, recs = records(sc, 40.0, contention=False)
    est = estimate(recs, m.cfg)
    for i, s in enumerate(SPEEDS[:-1]):
        assert est.link_mbps[f"n{i}"] == pytest.approx(s, rel=0.01)
    assert est.link_mbps["n4"] == pytest.approx(SPEEDS[-2], rel=0.01)


def test_a_crashed_node_is_down_and_keeps_no_fresh_evidence():
    sc = Scenario("cal", 3, 5, 60.0, LATENCY, (Interval(0, 60, 120.0, 800, SPEEDS),),
                  (Outage(2, 30.0, 60.0),))
    m, recs = records(sc, 60.0)
    est = estimate(last_heights(recs, 5), m.cfg, recent_heights=2)
    assert est.up == {"n0": True, "n1": True, "n2": False, "n3": True, "n4": True}
    assert est.speed_evidence["n2"] == 0 and est.link_mbps["n2"] == 0.0
    for i in (0, 1, 3, 4):  # copies to the crashed node still hold the uplinks
        assert est.link_mbps[f"n{i}"] == pytest.approx(SPEEDS[i], rel=0.01)


def test_the_newest_link_state_wins_in_a_window_across_a_change():
    """Links change at t=30; a window holding heights from both sides gives the new."""
    new = (9.0, 3.0, 7.0, 5.0, 11.0)
    sc = Scenario("cal", 3, 5, 60.0, LATENCY, (Interval(0, 30, 120.0, 800, SPEEDS),
                                               Interval(30, 60, 120.0, 800, new)))
    m, recs = records(sc, 60.0)
    after = max(r.height for r in recs if r.proposed_at < 30.0) + 1
    window = [r for r in recs if r.height >= after - 3]  # 3 heights before, the rest after
    assert any(r.proposed_at < 30.0 for r in window)
    est = estimate(window, m.cfg)
    for i, s in enumerate(new):
        assert est.link_mbps[f"n{i}"] == pytest.approx(s, rel=0.01)


@pytest.mark.parametrize("protocol", ["pbft", "bigfoot"])
def test_slow_links_with_round_changes(protocol):
    """Heights that need a round change (slow links, full blocks) still calibrate: the
    round-r proposer's re-proposal gives speeds; votes after a round change are not used
    for latencies (they queue behind round changes carrying blocks)."""
    speeds = (2.7, 6.2, 3.0, 4.3, 2.3)
    sc = Scenario("slow", 7, 5, 120.0, (10, 20, 30, 15, 25),
                  (Interval(0, 120, 190.0, 800, speeds),))
    m, recs = records(sc, 120.0, protocol)
    window = last_heights(recs, 5)
    assert any(r.round > 0 for r in window)
    est = estimate(window, m.cfg)
    for i, s in enumerate(speeds):
        assert est.link_mbps[f"n{i}"] == pytest.approx(s, rel=0.01)
    for i, lat in enumerate((10, 20, 30, 15, 25)):
        assert est.latency_ms[f"n{i}"] == pytest.approx(lat, abs=0.5)


def test_pair_latencies_of_a_network_that_is_no_star():
    """A latency matrix (a star plus a few ms either way per direction) comes back per
    ordered pair; the per-node view is its star fit."""
    star = [[0.0 if i == j else LATENCY[i] + LATENCY[j] for j in range(5)] for i in range(5)]
    skew = [[0.0 if i == j else ((3 * i + 7 * j) % 5 - 2) * 1.5 for j in range(5)]
            for i in range(5)]
    matrix = tuple(tuple(star[i][j] + skew[i][j] for j in range(5)) for i in range(5))
    sc = Scenario("mx", 3, 5, 40.0, LATENCY, (Interval(0, 40, 120.0, 800, SPEEDS),),
                  latency_matrix_ms=matrix)
    m, recs = records(sc, 40.0)
    est = estimate(recs, m.cfg)
    assert len(est.pair_latency_ms) == 20
    for (a, b), d in est.pair_latency_ms.items():
        assert d == pytest.approx(matrix[int(a[1:])][int(b[1:])], abs=0.5)
    for i, s in enumerate(SPEEDS):
        assert est.link_mbps[f"n{i}"] == pytest.approx(s, rel=0.01)


def test_a_prior_that_still_explains_the_records_stands():
    """Given the previous estimate and records it explains, nothing is refitted."""
    sc = Scenario("cal", 3, 5, 40.0, LATENCY, (Interval(0, 40, 120.0, 800, SPEEDS),))
    m, recs = records(sc, 40.0)
    first = estimate(recs, m.cfg)
    again = estimate(last_heights(recs, 5), m.cfg, prior=first, passes=1)
    assert again.link_mbps == pytest.approx(first.link_mbps, rel=1e-9)
    with pytest.raises(ValueError):
        estimate([], m.cfg)
