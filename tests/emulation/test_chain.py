"""A short chain on the emulated network: validators on hosts, a client, a switch."""

from __future__ import annotations

import csv

import pytest


@pytest.mark.smoke
def test_short_chain_run_switches_protocol_without_losing_transactions(run_shipped) -> None:
    _, run_dir, man = run_shipped("chain_smoke.yaml", [
        "duration=16", "processes.load.duration=11", "processes.load.tps=30",
        "processes.load.drain=3", "timeline.0.at=6"])
    (switch,) = [e for e in man["events"] if e["action"] == "switch_protocol"]
    assert '"ok": true' in switch["reply"]
    rows = list(csv.DictReader(open(run_dir / "chain_latency.csv")))
    assert len(rows) >= 300
    assert all(r["latency_s"] for r in rows), "every submitted transaction commits"
    protocols = [r["protocol"] for r in sorted(rows, key=lambda r: float(r["commit_s"]))]
    assert protocols[0] == "pbft" and protocols[-1] == "bigfoot"
    # Safety from the ledgers themselves: no fork, every chain a prefix of the others,
    # and all five validators within a block or two of each other at the end.
    check = man["chain"]["ledger_check"]
    assert check["validators"] == 5 and check["consistent"], check
    assert max(check["heights"].values()) - check["common_height"] <= 2, check
    blocks = list(csv.DictReader(open(run_dir / "chain_blocks.csv")))
    heights = [int(b["height"]) for b in blocks]
    assert heights == sorted(heights) and len(set(heights)) == len(heights)
    switch_at = next(float(b["t_s"]) for b in blocks if b["protocol"] == "bigfoot")
    assert switch["actual_s"] < switch_at < switch["actual_s"] + 5
    assert (run_dir / "chain_latency.png").is_file()
