"""Network swings in the scenario generator (WL4): one node's link slowed in chosen
intervals, drawn apart from the main stream so workloads without swings do not move."""

from __future__ import annotations

import pytest

from twin.scenarios import GeneratorSettings, generate, load_workload


def test_every_swung_interval_has_one_node_at_the_factor_and_the_swing_load() -> None:
    s = GeneratorSettings(link_mbps=(20, 30), heterogeneity=(0.0, 0.1), tps=(240, 260),
                          outage_prob=0.0, slow_node_prob=1.0, slow_node_factor=0.2,
                          slow_node_tps=(100, 110))
    sc = generate(s, seed=3)
    for iv in sc.intervals:
        fastest = max(iv.link_mbps)
        slow = [x for x in iv.link_mbps if x == pytest.approx(0.2 * fastest)]
        assert len(slow) == 1, iv.link_mbps
        assert 100 <= iv.tps <= 110


def test_swings_off_leave_a_workload_as_it_was_drawn() -> None:
    base = GeneratorSettings(outage_prob=0.5)
    off = generate(base, seed=7)
    on = generate(base.model_copy(update={"slow_node_prob": 0.5}), seed=7)
    assert off.outages == on.outages and off.latency_ms == on.latency_ms
    changed = [a != b for a, b in zip(off.intervals, on.intervals, strict=True)]
    assert any(changed) and not all(changed)  # some intervals swung, the rest identical
    assert generate(base, seed=7) == off


def test_wl4_swings_about_half_its_minutes() -> None:
    wl4 = load_workload("wl4")
    swung = total = 0
    for seed in range(1, 21):
        for iv in wl4.scenario(seed).intervals:
            total += 1
            swung += min(iv.link_mbps) < 0.5 * max(iv.link_mbps)
    assert 0.35 < swung / total < 0.65


def test_wl5_is_wl4_over_ten_minutes() -> None:
    wl4, wl5 = load_workload("wl4").generator, load_workload("wl5").generator
    assert wl5.duration == 600 and wl4.duration == 300
    assert wl5.model_copy(update={"duration": 300}) == wl4


def test_a_reversed_swing_load_range_is_refused() -> None:
    with pytest.raises(ValueError, match="slow_node_tps"):
        GeneratorSettings(slow_node_tps=(200, 100))
