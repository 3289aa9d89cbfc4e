"""What-if analysis: simulate the next step under each protocol, pick the best.

The twin clones its model of the estimated present (`twin.digital.DigitalTwin.
model_now`: the calibrated backlog, heights, who is down and link speeds; never the
physical chain) and replaces the unknown future with scenarios from the generator,
conditioned on what it knows now: the current rate, size and speeds persist over the
short horizon, a node that is down stays down for a drawn time, and a node that is up
may fail. Every protocol sees the same sampled futures (common random numbers), so the
comparison is between protocols, not between draws.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from twin.env import RewardKind, step_latency
from twin.model import PROTOCOL_NAMES, ChainModel, ProtocolSwitch
from twin.scenarios import GeneratorSettings, Interval, Outage, Scenario
from twin.workload import poisson_arrivals


class WhatIfSettings(BaseModel):
    """How much the what-if optimiser simulates per decision."""

    model_config = ConfigDict(extra="forbid")

    scenarios: int = Field(default=2, ge=1)
    """Sampled futures per decision; each protocol is simulated under all of them."""
    horizon: float | None = Field(default=None, gt=0)
    """Seconds simulated per future; default the decision step TS."""
    score: RewardKind = "committed_and_waiting"
    """Latency measure of a simulated step (the environment's reward measure)."""
    new_failures: bool = True
    """Futures may start a failure of a node that is up (at the generator's rate); False
    draws only how long the down nodes stay down (a point forecast of the likely
    future rather than the generator's mix)."""


def future_scenario(model: ChainModel, gen: GeneratorSettings, rng: np.random.Generator,
                    horizon: float, new_failures: bool = True) -> Scenario:
    """A scenario for [now, now + horizon] that starts from the model's current state
    (`model.observe()`: on the twin's `model_now` that is the estimated state)."""
    now = model.now
    end = now + horizon
    obs = model.observe()
    outages: list[Outage] = []
    for i, up in enumerate(obs.up):
        if not up:
            outages.append(Outage(i, now, now + float(rng.uniform(0.0, gen.outage_duration[1]))))
    # The chance that a failure starts within the horizon, from the generator's rate.
    if (new_failures and len(outages) < gen.max_offline
            and rng.uniform() < gen.outage_prob * horizon / gen.interval):
        node = int(rng.choice([i for i, up in enumerate(obs.up) if up]))
        start = float(rng.uniform(now, end))
        outages.append(Outage(node, start, start + float(rng.uniform(*gen.outage_duration))))
    iv = Interval(now, end, obs.tps, int(obs.tx_size), obs.link_mbps)
    return Scenario("whatif", int(rng.integers(2**31 - 1)), len(obs.up), end, obs.latency_ms,
                    (iv,), tuple(outages))


def evaluate(model: ChainModel, step_seconds: float, gen: GeneratorSettings,
             settings: WhatIfSettings, rng: np.random.Generator,
             protocols: tuple[str, ...] = PROTOCOL_NAMES) -> np.ndarray:
    """Mean simulated step latency for each protocol (index = action)."""
    horizon = settings.horizon or step_seconds
    totals = np.zeros(len(protocols))
    for _ in range(settings.scenarios):
        sc = future_scenario(model, gen, rng, horizon, settings.new_failures)
        iv = sc.intervals[0]
        times, sizes = poisson_arrivals(rng, iv.start, iv.end, iv.tps, iv.tx_size)
        stream = model.stream.splice(model.now, times, sizes)
        for a, p in enumerate(protocols):
            sim = model.clone()
            sim.replace_future(sc, stream)
            sim.apply(ProtocolSwitch(p))
            t0 = sim.now
            sim.run_until(t0 + horizon)
            totals[a] += step_latency(sim, t0, t0 + horizon, settings.score)[2]
    return totals / settings.scenarios


class WhatIfOptimiser:
    """Decides every step by simulation alone (the twin's earlier, costly optimiser)."""

    def __init__(self, gen: GeneratorSettings, step_seconds: float,
                 settings: WhatIfSettings | None = None, seed: int = 0,
                 protocols: tuple[str, ...] = PROTOCOL_NAMES) -> None:
        self.gen = gen
        self.protocols = protocols
        """The actions, in the environment's order (index = action)."""
        self.step_seconds = step_seconds
        self.settings = settings or WhatIfSettings()
        self.rng = np.random.default_rng([seed, 0x3F])
        self.calls = 0
        self.seconds = 0.0
        """Wall-clock seconds spent in what-if simulation."""

    def evaluate(self, model: ChainModel) -> np.ndarray:
        t = time.perf_counter()
        values = evaluate(model, self.step_seconds, self.gen, self.settings, self.rng,
                          self.protocols)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return values

    def act(self, model: ChainModel) -> int:
        return int(np.argmin(self.evaluate(model)))
