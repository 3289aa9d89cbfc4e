"""Speed of the twin's model: simulated seconds per wall-clock second.

Run: python benchmarks/twin_speed.py. Target: >= 1,000x real time for 5 nodes at 100 TPS.
"""

from __future__ import annotations

import time

from twin.model import ChainModel, ModelConfig
from twin.scenarios import Interval, Scenario


def measure(n: int, tps: float, seconds: float, protocol: str) -> tuple[float, int]:
    sc = Scenario("bench", 1, n, seconds, tuple(10.0 + i for i in range(n)),
                  (Interval(0.0, seconds, tps, 500, tuple(20.0 + i for i in range(n))),))
    model = ChainModel(sc, ModelConfig(), protocol)
    t = time.perf_counter()
    model.run_until(seconds)
    wall = time.perf_counter() - t
    assert not model.violations
    return seconds / wall, model.kernel.events_run


def main() -> None:
    for n, tps, seconds in ((5, 100.0, 600.0), (16, 1000.0, 120.0)):
        for protocol in ("pbft", "bigfoot"):
            speed, events = measure(n, tps, seconds, protocol)
            print(f"{n:2d} nodes {tps:6.0f} TPS {protocol:8s}: {speed:9.0f}x real time "
                  f"({events} events over {seconds:.0f} simulated s)")


if __name__ == "__main__":
    main()
