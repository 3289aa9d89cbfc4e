"""The ABN shim on a middlebox (`abn:` on a topology host, started by the runner as a
role): two flows share the capacity it governs, and the ACKs that reach their sender
carry each flow's share, written per flow every period."""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess

import pytest

CAPACITY = 40e6
TOPO = {
    "name": "abnline",
    "hosts": {"h1": {}, "h2": {},
              "mb": {"role": "middlebox",
                     # Cubic ignores the rates and keeps the queue full: the shim would
                     # take the backlog off C_r; this test checks the accounting alone
                     "abn": {"link": "path", "capacity": "40mbit", "period": 0.1,
                             "queue_drain": 0}}},
    "links": [{"name": "left", "ends": ["h1", "mb"]},
              {"name": "path", "ends": ["mb", "h2"], "bw": "100mbit", "delay": "5ms",
               "direction": "forward"}],
}


@pytest.mark.skipif(not shutil.which("tshark"), reason="needs tshark")
def test_two_flows_are_notified_equal_shares(run_experiment) -> None:
    run_dir, man = run_experiment({
        "name": "abnshim", "duration": 7,
        "captures": [{"host": "h1", "snaplen": 200}],
        "processes": [
            {"name": "srv1", "kind": "iperf3_server", "host": "h2", "port": 5201},
            {"name": "srv2", "kind": "iperf3_server", "host": "h2", "port": 5202},
            {"name": "f1", "kind": "iperf3_client", "host": "h1", "server": "h2",
             "port": 5201, "start": 1.0, "duration": 4, "congestion": "cubic"},
            {"name": "f2", "kind": "iperf3_client", "host": "h1", "server": "h2",
             "port": 5202, "start": 1.0, "duration": 4, "congestion": "cubic"},
        ],
    }, TOPO)
    role = man["roles"]["abn:mb"]
    recs = [json.loads(line) for line in (run_dir / role["records"]).read_text().splitlines()]
    assert role["periods"] == len(recs) >= 50
    # iperf3 opens a control connection beside each data connection; the data flows are
    # the two that send in nearly every period
    counts: dict[tuple, int] = {}
    for r in recs:
        for f in r["flows"]:
            counts[tuple(f["key"])] = counts.get(tuple(f["key"]), 0) + 1
    data_flows = sorted(counts, key=counts.get, reverse=True)[:2]
    both = [r for r in recs if {tuple(f["key"]) for f in r["flows"]} == set(data_flows)]
    assert len(both) >= 15, f"{len(both)} periods with exactly the two data flows"
    for r in both:  # Algorithm 1 without deadlines: equal shares of C_r
        rates = sorted(f["rate_bps"] for f in r["flows"])
        assert rates[0] == pytest.approx(rates[1], rel=1e-6)
        assert rates[0] == pytest.approx(r["C_r_bps"] / 2, rel=1e-3)
        assert 0.95 * CAPACITY / 2 < rates[0] <= CAPACITY / 2  # only this way's ACKs off C
    (pcap,) = run_dir.glob("capture_h1_*.pcap")
    out = subprocess.run(
        ["tshark", "-r", str(pcap), "-o", "tcp.check_checksum:TRUE", "-Y",
         "tcp.options.experimental.exid == 0xab4e", "-T", "fields", "-e", "tcp.dstport",
         "-e", "tcp.options.experimental.data", "-e", "tcp.checksum.status"],
        capture_output=True, text=True, check=True).stdout.split("\n")
    seen: dict[str, list[int]] = {}
    for line in filter(None, out):
        dport, data, status = line.split("\t")
        assert status != "0", line  # no bad checksum on a rewritten ACK
        rate = int(data.replace(":", "")[-8:], 16) * 1000
        seen.setdefault(dport, []).append(rate)
    ports = {str(k[1]) for k in data_flows}
    assert ports <= set(seen), (ports, seen.keys())  # each data flow's ACKs carry a rate
    med = [statistics.median(seen[p]) for p in ports]
    assert med[0] == pytest.approx(med[1], rel=0.05), med
    assert 0.8 * CAPACITY / 2 < med[0] <= CAPACITY / 2, med
    stats = role["counters"]
    assert stats["verdict_errors"] == 0 and stats["abn"]["written"] > 100, stats
    assert role["returncode"] == 0  # stopped cleanly, its FORWARD rule removed
    assert "abn_rates_mb.png" in man["artifacts"]  # the rates figure, from the records
