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
