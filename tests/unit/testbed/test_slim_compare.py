"""Slim-flow summaries and the across-seed comparison, on recorded run folders."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from testbed import slim_compare


def make_run(root: Path, variant: str, seed: int, times: list[float | None],
             deadline: float = 0.2, fat_bps: float = 80e6) -> Path:
    d = root / f"{variant}_{seed}"
    (d / "logs").mkdir(parents=True)
    with (d / "slim_slim.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, ["burst", "index", "completion_ms", "met", "error"])
        w.writeheader()
        for i, t in enumerate(times):
            w.writerow({"burst": i, "index": 0, "completion_ms": "" if t is None else t,
                        "met": int(t is not None and t <= deadline * 1e3),
                        "error": "" if t is not None else "stopped"})
    (d / "logs" / "fat.json").write_text(json.dumps(
        {"end": {"sum_received": {"bits_per_second": fat_bps}}}))
    man = {"experiment": {"name": "live", "variant": variant, "seed": seed, "processes": [
        {"name": "fat", "kind": "iperf3_client"},
        {"name": "slim", "kind": "slim_client", "deadline": deadline}]}}
    (d / "manifest.json").write_text(json.dumps(man))
    assert [p.name for p in slim_compare.analyse(d, man)] == ["slim_summary.csv",
                                                               "slim_cdf.png"]
    return d


def test_a_run_summary_counts_unfinished_transfers_as_missed_and_late(tmp_path):
    d = make_run(tmp_path, "abn-dqn", 1, [100.0, 150.0, 250.0, None])
    (row,) = csv.DictReader((d / "slim_summary.csv").open())
    assert (row["transfers"], row["completed"], row["missed"]) == ("4", "3", "2")
    assert float(row["miss_pct"]) == 50.0 and float(row["fat_mbps"]) == 80.0
    assert float(row["p50_ms"]) == pytest.approx(200.0)
    assert math.isinf(float(row["p99_ms"]))


def test_schemes_are_paired_by_seed_and_only_clear_differences_are_significant(tmp_path):
    runs = []
    for seed in (1, 2, 3):
        runs.append(make_run(tmp_path, "abn-dqn", seed, [100.0 + seed] * 20))
        runs.append(make_run(tmp_path, "bbr", seed, [190.0 + 3 * seed] * 20, fat_bps=86e6))
        runs.append(make_run(tmp_path, "noise", seed, [100.0 + (5, -5, 1)[seed - 1]] * 20))
    result = slim_compare.aggregate(runs)
    assert result["schemes"]["bbr"]["seeds"] == [1, 2, 3]
    bbr = result["paired"]["bbr"]
    assert bbr["p95_ms"]["mean"] == pytest.approx(-(90 + 2 * 2))
    assert bbr["p95_ms"]["significant"] and bbr["fat_mbps"]["significant"]
    assert not result["paired"]["noise"]["p95_ms"]["significant"]
    out = slim_compare.write_comparison(tmp_path / "cmp", result)
    assert all(p.exists() for p in out)


def _chain_run(root: Path, variant: str, seed: int, lat_s: list[float | None]) -> Path:
    d = root / f"chain_{variant}_{seed}"
    (d / "logs").mkdir(parents=True)
    with (d / "chain_latency.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["client", "tx_id", "submit_s", "commit_s", "latency_s", "protocol"])
        for i, x in enumerate(lat_s):
            w.writerow(["load", f"t{i}", i, "" if x is None else i + x, "" if x is None else x,
                        "pbft"])
    (d / "logs" / "fat.json").write_text(json.dumps(
        {"end": {"sum_received": {"bits_per_second": 70e6}}}))
    man = {"experiment": {"name": "abn_dqn_chain", "variant": variant, "seed": seed,
                          "processes": [{"name": "fat", "kind": "iperf3_client"},
                                        {"name": "load", "kind": "chain_client"}]}}
    assert [p.name for p in slim_compare.analyse(d, man)] == ["slim_summary.csv"]
    return d


def test_a_chains_transactions_are_summarised_like_transfers(tmp_path):
    d = _chain_run(tmp_path, "cubic", 1, [0.1, 0.2, 0.3, None])
    (row,) = csv.DictReader((d / "slim_summary.csv").open())
    assert (row["client"], row["transfers"], row["completed"], row["missed"]) == (
        "load", "4", "3", "1")
    assert float(row["p50_ms"]) == pytest.approx(250.0) and float(row["fat_mbps"]) == 70.0
    runs = [make_run(tmp_path, v, s, [100.0 + s] * 5) for v in ("abn-dqn", "bbr")
            for s in (1, 2)]
    runs += [_chain_run(tmp_path, v, s, [0.1 * (1 + (v == "bbr")) + s / 100] * 5)
             for v in ("abn-dqn", "bbr") for s in (1, 2)]
    result = slim_compare.aggregate(runs)  # two kinds of client: schemes are per client
    assert sorted(result["schemes"]) == ["abn-dqn load", "abn-dqn slim", "bbr load",
                                         "bbr slim"]
    assert result["paired"]["bbr load"]["p50_ms"]["mean"] == pytest.approx(-100.0)
    assert set(result["paired"]) == {"bbr load", "bbr slim"}
    assert slim_compare.schemes_for(Path("experiments/abn_dqn_chain.yaml")) is \
        slim_compare.CHAIN_SCHEMES
