"""Fault events in experiment files (issue 17) and the liveness report of a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed import config, liveness
from tests.unit.testbed.test_config import error, write

TOPO = {"name": "t", "hosts": {h: {} for h in ("n1", "n2", "n3", "n4", "c1")},
        "switches": {"sw": {}},
        "links": [{"name": f"l{h}", "ends": [h, "sw"]} for h in ("n1", "n2", "n3", "n4", "c1")]}
CHAIN = {"chain": {"validators": ["n1", "n2", "n3", "n4"]}, "duration": 30}


def test_fault_events_load(tmp_path: Path) -> None:
    exp = {**CHAIN, "timeline": [
        {"at": 5, "action": "crash", "host": "n2"},
        {"at": 9, "action": "restart", "host": "n2"},
        {"at": 10, "action": "slow", "host": "n3", "bw": "3mbit", "delay": "150ms"},
        {"at": 12, "action": "partition", "groups": [["n1", "n2"], ["n3", "n4"]]},
        {"at": 20, "action": "heal"}]}
    loaded = config.load_experiment(write(tmp_path, exp, TOPO))
    assert [e.action for e in loaded.experiment.timeline] == [
        "crash", "restart", "slow", "partition", "heal"]


@pytest.mark.parametrize("timeline,words", [
    ([{"at": 5, "action": "crash", "host": "c1"}], ["crash", "'c1'", "runs no validator"]),
    ([{"at": 5, "action": "restart", "host": "n1"}], ["restart of n1", "not crashed"]),
    ([{"at": 5, "action": "crash", "host": "n1"}, {"at": 6, "action": "crash", "host": "n1"}],
     ["n1 is crashed already"]),
    ([{"at": 5, "action": "heal"}], ["heal without a partition"]),
    ([{"at": 5, "action": "partition", "groups": [["n1"], ["n2"]]},
      {"at": 6, "action": "partition", "groups": [["n1"], ["n3"]]}], ["heal it first"]),
    ([{"at": 5, "action": "partition", "groups": [["n1", "n2"], ["n2"]]}],
     ["in two partition groups"]),
    ([{"at": 5, "action": "partition", "groups": [["n1"], ["zz"]]}],
     ["groups[1]", "unknown host 'zz'"]),
    ([{"at": 5, "action": "slow", "host": "zz", "bw": "1mbit"}], ["unknown host 'zz'"]),
])
def test_bad_fault_events_are_named(tmp_path: Path, timeline: list, words: list) -> None:
    msg = error(tmp_path, {**CHAIN, "timeline": timeline}, TOPO)
    for w in words:
        assert w in msg, msg


def _telemetry(folder: Path, vid: str, times: dict[int, float]) -> None:
    tel = folder / "chain" / "telemetry"
    tel.mkdir(parents=True, exist_ok=True)
    with open(tel / f"{vid}.jsonl", "w") as fh:
        for h, t in times.items():
            fh.write(json.dumps({"kind": "block", "t": t, "record": {
                "height": h, "committed_at": t, "protocol": "pbft", "round": 0,
                "tx_count": 1}}) + "\n")
        fh.write('{"kind": "block", "t": 1')  # cut short by a kill: ignored


def test_stalls_and_recovery_from_a_run_folder(tmp_path: Path) -> None:
    t0 = 1000.0
    # v0..v2 commit every 0.5 s but nothing from 10 to 16 s; v3 is cut off from 4 s and
    # reaches the height the chain had at the heal (16 s) at 16.7 s.
    steady = {h: t0 + 0.5 * h for h in range(1, 21)}                     # to 10 s
    steady.update({h: t0 + 16 + 0.5 * (h - 20) for h in range(21, 40)})  # 16.5-25.5 s
    for vid in ("v0", "v1", "v2"):
        _telemetry(tmp_path, vid, steady)
    lag = {h: t for h, t in steady.items() if t - t0 < 4.2}
    lag.update({h: t0 + 16.5 + 0.01 * h for h in range(9, 22)})
    lag.update({h: t for h, t in steady.items() if h >= 22})
    _telemetry(tmp_path, "v3", lag)
    (tmp_path / "chain_latency.csv").write_text(
        "client,tx_id,submit_s,commit_s,latency_s,protocol\n"
        "c,a,1.0,1.5,0.5,pbft\nc,b,11.0,16.5,5.5,pbft\nc,c,24.0,,,\n")
    man = {"timeline_t0_unix": t0, "experiment": {"duration": 30},
           "events": [{"action": "partition", "actual_s": 4.0, "groups": [["n4"], ["n1"]]},
                      {"action": "heal", "actual_s": 16.0}]}
    rep = liveness.report(tmp_path, man, round_timeout=1.0)
    assert rep["stalls"] == [
        {"from_s": 10.0, "to_s": 16.5, "length_s": 6.5, "expected": False},
        {"from_s": 25.5, "to_s": 30.0, "length_s": 4.5, "expected": False}]
    part, heal = rep["faults"]
    assert part["longest_gap_s"] == 6.0 and part["catch_up_s"] == {}
    assert heal["height_at_event"] == 20 and heal["longest_gap_s"] == 4.5
    assert heal["catch_up_s"] == {"v3": pytest.approx(0.7, abs=1e-6)}


def test_no_stall_when_nothing_waits(tmp_path: Path) -> None:
    _telemetry(tmp_path, "v0", {1: 1001.0, 2: 1020.0})
    (tmp_path / "chain_latency.csv").write_text(
        "client,tx_id,submit_s,commit_s,latency_s,protocol\nc,a,0.5,1.0,0.5,pbft\n")
    man = {"timeline_t0_unix": 1000.0, "experiment": {"duration": 20}, "events": []}
    assert liveness.report(tmp_path, man, 1.0)["stalls"] == []


def test_a_stall_while_more_than_f_are_down_is_expected(tmp_path: Path) -> None:
    """All four down from 12 to 15 s: no chain can commit; the stall is expected, but
    only while the recovery allowance after the restart lasts."""
    for vid in ("v0", "v1", "v2", "v3"):
        _telemetry(tmp_path, vid, {1: 1011.0, 2: 1015.5, 3: 1025.0})
    (tmp_path / "chain_latency.csv").write_text(
        "client,tx_id,submit_s,commit_s,latency_s,protocol\nc,a,11.5,25.0,13.5,pbft\n")
    down = [{"action": a, "host": h, "actual_s": t} for a, t in (("crash", 12.0),
                                                                  ("restart", 15.0))
            for h in ("n1", "n2", "n3", "n4")]
    man = {"timeline_t0_unix": 1000.0, "experiment": {
        "duration": 26, "chain": {"validators": ["n1", "n2", "n3", "n4"]}}, "events": down}
    rep = liveness.report(tmp_path, man, 1.0)
    assert rep["beyond_f"] == [{"from_s": 12.0, "to_s": 15.0}]
    assert [(s["from_s"], s["expected"]) for s in rep["stalls"]] == [(11.0, True),
                                                                      (15.5, False)]
