"""The run's chain tables keep the transactions of a client that was killed."""

from __future__ import annotations

import csv
from pathlib import Path

from testbed.chain import LATENCY_CSV, write_tables


def test_latency_table_is_rebuilt_from_a_killed_clients_journal(tmp_path: Path) -> None:
    # Three submissions, two commit notices, and a last line cut short by the kill.
    (tmp_path / "c1_tx.csv.journal").write_text(
        "s,c1-1,100.000000\ns,c1-2,100.010000\ns,c1-3,100.020000\n"
        "c,c1-1,100.200000\nc,c1-2,100.250000\nc,c1-3,10")
    man = {"timeline_t0_unix": 100.0,
           "experiment": {"processes": [{"kind": "chain_client", "name": "c1"}]}}
    write_tables(tmp_path, man)
    rows = list(csv.DictReader(open(tmp_path / LATENCY_CSV)))
    assert [r["tx_id"] for r in rows] == ["c1-1", "c1-2", "c1-3"]
    assert [r["latency_s"] for r in rows] == ["0.200000", "0.240000", ""]
    assert rows[2]["commit_s"] == "" and rows[2]["submit_s"] == "0.0200"
