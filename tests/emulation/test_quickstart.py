"""The README's main job, shortened: the quickstart runs, shapes, writes its tables."""

from __future__ import annotations

import csv
import re

import pytest

from testbed import runner


@pytest.mark.smoke
def test_quickstart_short_run_produces_results_and_cleans_up(run_shipped) -> None:
    _, run_dir, man = run_shipped("quickstart.yaml", [
        "duration=7", "processes.cubic.duration=5", "processes.bbr.duration=5",
        "processes.rtt.count=10", "processes.rtt.interval=0.2"])
    assert man["overrides"][0] == "duration=7"
    assert man["shaping_backend"] in ("netem", "userspace")
    assert man["git"]["commit"] is None or len(man["git"]["commit"]) == 40
    for name in ("throughput.csv", "flows.csv", "iperf3_summary.csv", "throughput.png"):
        assert (run_dir / name).is_file(), name
    # Shaping: unloaded pings see the configured 40 ms RTT (pings start before the flows).
    ping = (run_dir / "logs" / "rtt.log").read_text()
    rtt_min = float(re.search(r"= ([\d.]+)/", ping).group(1))
    assert 39.5 <= rtt_min <= 42.0
    # Both flows are in the pcap-derived table and together fill most of 100 Mbit/s.
    rows = csv.DictReader(open(run_dir / "flows.csv"))
    flows = {r["flow"]: float(r["mean_ip_mbps"]) for r in rows}
    assert set(flows) == {"cubic", "bbr"}
    assert 60 <= sum(flows.values()) <= 104, flows
    # report redraws the figure from the saved CSVs.
    (run_dir / "throughput.png").unlink()
    assert runner.report(run_dir) == [run_dir / "throughput.png"]
