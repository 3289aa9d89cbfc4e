"""The shipped topologies and switch kinds carry traffic with the configured delays."""

from __future__ import annotations

import json
import re
import shutil
import statistics

import pytest
import yaml

from testbed import config, runner
from testbed.config import PROJECT_ROOT

from .conftest import LINE_TOPO
from .ping_rtt import check_rtt, ping_times, ping_total_ms


def test_abn_paper_topology_routes_through_four_middleboxes(tmp_path) -> None:
    exp = {
        "name": "abn_paths", "topology": str(PROJECT_ROOT / "topologies" / "abn_paper.yaml"),
        "duration": 8, "until_done": True,
        "processes": [
            {"name": "p13", "kind": "ping", "host": "e1", "target": "e3", "count": 10,
             "interval": 0.1, "required": True},
            {"name": "p24", "kind": "ping", "host": "e2", "target": "e4", "count": 10,
             "interval": 0.1, "required": True},
            {"name": "trace", "kind": "command", "host": "e1", "required": True,
             "command": "ip route get {ip:e3}"},
        ],
    }
    path = tmp_path / "abn.yaml"
    path.write_text(yaml.safe_dump(exp))
    run_dir = runner.run(config.load_experiment(path), tmp_path / "res", show_progress=False)
    for name in ("p13", "p24"):
        text = (run_dir / "logs" / f"{name}.log").read_text()
        assert " 0% packet loss" in text
        # 50 ms one-way on the bottleneck's forward direction only: RTT ~50 ms.
        check_rtt(ping_times(text), 50.0, 2.0, low_ms=0.5,
                  total_ms=ping_total_ms(text))
    via = man_route = (run_dir / "logs" / "trace.log").read_text()
    mb1 = json.loads((run_dir / "manifest.json").read_text())["addressing"]["host_ips"]["mb1"]
    assert f"via {mb1[0]} " in via, man_route


@pytest.mark.skipif(not shutil.which("ovs-vsctl"), reason="Open vSwitch is not installed")
def test_ovs_userspace_switch_forwards(run_experiment) -> None:
    topo = {
        "name": "ovs", "switch": "ovs-user",
        "hosts": {"h1": {}, "h2": {}}, "switches": {"sw": {}},
        "links": [{"name": "a", "ends": ["h1", "sw"], "delay": "5ms"},
                  {"name": "b", "ends": ["sw", "h2"]}],
    }
    run_dir, man = run_experiment({
        "name": "ovs_ping", "duration": 8, "until_done": True,
        "processes": [{"name": "ping", "kind": "ping", "host": "h1", "target": "h2",
                       "count": 10, "interval": 0.1, "required": True}],
    }, topo)
    text = (run_dir / "logs" / "ping.log").read_text()
    assert " 0% packet loss" in text
    check_rtt(ping_times(text), 10.0, 2.0, low_ms=0.5, total_ms=ping_total_ms(text))


def test_timeline_changes_delay_and_takes_link_down(run_experiment) -> None:
    run_dir, man = run_experiment({
        "name": "timeline", "duration": 7,
        "links": {"path": {"delay": "5ms"}},
        "processes": [{"name": "ping", "kind": "ping", "host": "h1", "target": "h2",
                       "count": 60, "interval": 0.1, "start": 0.2}],
        "timeline": [
            {"at": 2, "action": "set_link", "link": "path", "delay": "40ms"},
            {"at": 4, "action": "link_down", "link": "path"},
            {"at": 5, "action": "link_up", "link": "path"},
        ],
    }, LINE_TOPO)
    rtts = [(int(m.group(1)), float(m.group(2))) for m in re.finditer(
        r"icmp_seq=(\d+) ttl=\d+ time=([\d.]+)", (run_dir / "logs" / "ping.log").read_text())]
    by_seq = dict(rtts)
    early = [r for s, r in rtts if s <= 15]
    mid = [r for s, r in rtts if 22 <= s <= 36]
    # Medians: ping -U counts its own wake-ups too, which now and then add a few ms.
    assert early and 9.8 <= statistics.median(early) < 12  # 2 x 5 ms
    assert mid and 79.8 <= statistics.median(mid) < 82  # 2 x 40 ms after the change
    assert min(mid) >= 79.5
    assert not any(41 <= s <= 47 for s in by_seq)  # link down: no replies
    assert any(s >= 52 for s in by_seq)  # back up, routes restored
    assert [e["action"] for e in man["events"] if e["action"] != "start"] == [
        "set_link", "link_down", "link_up"]
