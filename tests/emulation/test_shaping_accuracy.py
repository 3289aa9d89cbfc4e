"""Shaping accuracy on this kernel (userspace delay line where sch_netem is missing).

Acceptance of the testbed core: RTT within +-1 ms of the configured RTT at 40 and
200 ms; throughput within 5% of the configured rate at 100 Mbit/s and 1 Gbit/s; 1%
configured loss measures 0.7-1.3% over 10,000 packets.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from .ping_rtt import check_rtt, ping_times, ping_total_ms
from .reliable import until_reliable

FRAME, PAYLOAD = 1514, 1448
"""Ethernet frame and TCP payload (with timestamps) of a full-size packet: goodput is at
most PAYLOAD/FRAME of the rate HTB enforces on frames."""


def _ping_stats(text: str) -> tuple[int, int, float]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    r = re.search(r"rtt min/avg/max/mdev = [\d.]+/([\d.]+)/", text)
    assert m, text[-300:]
    return int(m.group(1)), int(m.group(2)), float(r.group(1)) if r else float("nan")


@pytest.mark.parametrize("rtt_ms", [40, 200])
def test_ping_rtt_matches_configured(run_experiment, rtt_ms: int) -> None:
    """The RTT is within +-1 ms whenever the emulator kept up. A run that misses it is
    retried only if the health judge marked it unreliable (the delay line fell behind,
    the user is told so); a miss in a run judged ok fails at once."""
    count = 30

    def run(attempt: int) -> tuple[Any, dict]:
        run_dir, man = run_experiment({
            "name": f"rtt{rtt_ms}_{attempt}", "duration": count * 0.1 + rtt_ms / 1000 + 2,
            "links": {"path": {"delay": f"{rtt_ms // 2}ms"}},
            "processes": [{"name": "ping", "kind": "ping", "host": "h1", "target": "h2",
                           "count": count, "interval": 0.1, "start": 0.5, "required": True}],
        })
        text = (run_dir / "logs" / "ping.log").read_text()
        sent, got, _ = _ping_stats(text)
        assert (sent, got) == (count, count)
        assert len(ping_times(text)) == count - 1
        return run_dir, man

    def check(run_dir: Any, man: dict) -> None:
        text = (run_dir / "logs" / "ping.log").read_text()
        check_rtt(ping_times(text), rtt_ms, 1.0, total_ms=ping_total_ms(text))

    until_reliable(f"rtt{rtt_ms}", run, check)


@pytest.mark.parametrize("mbit", [100, 1000])
def test_tcp_throughput_matches_configured_rate(run_experiment, mbit: int) -> None:
    """Within 5% whenever the emulator kept up; retried as the RTT test is."""

    def run(attempt: int) -> tuple[Any, dict]:
        return run_experiment({
            "name": f"rate{mbit}_{attempt}", "duration": 9,
            "links": {"path": {"bw": f"{mbit}mbit", "delay": "5ms", "direction": "forward"}},
            "processes": [
                {"name": "srv", "kind": "iperf3_server", "host": "h2"},
                {"name": "flow", "kind": "iperf3_client", "host": "h1", "server": "h2",
                 "start": 0.5, "duration": 8, "congestion": "cubic"},
            ],
        })

    def check(run_dir: Any, man: dict) -> None:
        data = json.loads((run_dir / "logs" / "flow.json").read_text())
        # Skip the first second (slow start) and count what the receiver got: the
        # sender's intervals also count bytes still sitting in its socket buffer.
        receiver = data["server_output_json"]
        ivals = [i["sum"] for i in receiver["intervals"] if i["sum"]["start"] >= 1.0]
        goodput = sum(i["bytes"] for i in ivals) * 8 / sum(i["seconds"] for i in ivals) / 1e6
        wire = goodput * FRAME / PAYLOAD
        assert abs(wire - mbit) / mbit <= 0.05, f"wire {wire:.1f} (goodput {goodput:.1f}) Mbit/s"

    until_reliable(f"rate{mbit}", run, check)


def test_one_percent_loss_over_ten_thousand_packets(run_experiment) -> None:
    n = 10000
    run_dir, man = run_experiment({
        "name": "loss", "duration": 60, "until_done": True,
        "links": {"path": {"loss": "1%", "direction": "forward"}},
        "processes": [{"name": "flood", "kind": "command", "host": "h1", "required": True,
                       "command": f"ping -n -q -f -c {n} -W 0.05 {{ip:h2}}"}],
    })
    sent, got, _ = _ping_stats((run_dir / "logs" / "flood.log").read_text())
    assert sent == n
    loss = (sent - got) / sent
    assert 0.007 <= loss <= 0.013, f"measured loss {loss:.4f}"
    if man["shaping_backend"] == "userspace":  # netem keeps no per-link counters here
        stats = man["delay_lines"]["links"]
        assert sum(s["counters"]["dropped"] for s in stats.values()) == sent - got
