"""A run whose emulator could not keep up ends as `unreliable`, with the periods named."""

from __future__ import annotations

HOG = "python3 -c 'import time\nt = time.time()\nwhile time.time() - t < 6: pass'"


def test_saturated_host_marks_the_run_unreliable(run_experiment) -> None:
    # Three busy loops on two cores for 6 s, while a ping crosses a delay line.
    run_dir, man = run_experiment({
        "name": "hogs", "duration": 9,
        "links": {"path": {"delay": "5ms"}},
        "processes": [
            {"name": "ping", "kind": "ping", "host": "h1", "target": "h2", "count": 60,
             "interval": 0.1, "start": 0.5},
            *[{"name": f"hog{i}", "kind": "command", "host": host, "command": HOG,
               "start": 1.0} for i, host in enumerate(["h1", "h2", "mb"])],
        ],
    })
    assert man["status"] == "unreliable"
    kinds = {p["kind"] for p in man["health"]["periods"]}
    assert "host_cpu" in kinds, man["health"]
    (period,) = [p for p in man["health"]["periods"] if p["kind"] == "host_cpu"]
    assert 0.5 <= period["start_s"] <= 3.0 and 5.0 <= period["end_s"] <= 8.5, period
    assert any("host" in r for r in man["health"]["reasons"])


def test_saturated_delay_line_marks_the_run_unreliable(run_experiment) -> None:
    # Per-packet delay at 2 Gbit/s: ~110k packets/s, more than the line's thread can
    # release on time on 2 cores (the kernel runs each packet's path downstream inside
    # the verdict call), so most packets leave > 1 ms late and the run must say so.
    run_dir, man = run_experiment({
        "name": "flood", "duration": 9, "until_done": True,
        "links": {"path": {"bw": "2gbit", "delay": "20ms", "direction": "forward",
                           "granularity": "packet"}},
        "processes": [
            {"name": "srv", "kind": "iperf3_server", "host": "h2"},
            {"name": "flow", "kind": "iperf3_client", "host": "h1", "server": "h2",
             "start": 0.5, "duration": 7, "congestion": "cubic"},
        ],
    })
    assert man["status"] == "unreliable", man["health"]
    kinds = {p["kind"] for p in man["health"]["periods"]}
    assert kinds & {"late_release", "line_cpu", "queue_overflow"}, man["health"]
    assert any("delay line" in r for r in man["health"]["reasons"]), man["health"]["reasons"]
