"""The hindsight oracle: the best protocol per step, knowing the future (a reference).

At every decision step the oracle clones the true model (the clone shares the true
scenario and transaction stream, so it sees the real future), runs each protocol for
one step TS, scores each with the environment's own reward measure (`step_latency` of
`EnvSettings.reward`), picks the best (ties: the lowest index in `protocols`) and then
advances the real model by that protocol through `ChainTwinEnv.step`, the code path
`run_episode` uses. Its episode latency is therefore measured exactly as a policy's is,
and an oracle restricted to one protocol *is* `run_episode(fixed(a))`.

What it is not: the optimum over switch sequences. It is a greedy, one-step-lookahead
policy with perfect knowledge of the next step. A choice changes the state the next
step starts from (backlog, heights, a round in progress), which the greedy choice
ignores, and it optimises the step reward (with 'committed_and_waiting', waiting
transactions count with their age) while the episode latency weights committed
transactions only. So it is a reference, not a bound: a policy can beat it, and its
switching gain below can be negative. Measured (issue 19): on WL2 seed 9 its PBFT
steps through an outage left the recovering node behind when the next node crashed,
and the chain stalled: 90% worse than always-BigFoot; on held-out WL3 seeds, 2 of 20
came out about 1% worse than the best fixed protocol.

Gains (both are fractions, not percent):

- `switching_gain` = (best fixed - oracle) / best fixed: how much lower the oracle's
  latency is than that of the best single protocol chosen in hindsight for the whole
  episode; the room there is for switching on this scenario.
- `gain_captured` = (best fixed - policy) / (best fixed - oracle): the share of that
  room a policy realises (1: as good as the oracle; 0: no better than the best fixed
  protocol; negative: worse than it; above 1: better than the greedy oracle).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from twin.env import ChainTwinEnv, EnvSettings, step_latency
from twin.model import ChainModel, ProtocolSwitch
from twin.scenarios import Scenario


@dataclass
class OracleResult:
    """One oracle episode: its choices, every protocol's step score, its latency."""

    protocols: tuple[str, ...]
    """The protocols the oracle chose between; `choices` index this."""
    choices: list[int] = field(default_factory=list)
    """Per step, the index in `protocols` of the one chosen."""
    actions: list[int] = field(default_factory=list)
    """Per step, the environment action (index in `env.protocols`), as in EpisodeResult."""
    scores: list[tuple[float, ...]] = field(default_factory=list)
    """Per step, every protocol's step latency (the env's reward measure, seconds)."""
    latency: float = 0.0
    """Transaction-weighted mean latency over the episode, as `run_episode` reports it."""
    safety_violations: int = 0
    uncommitted: int = 0
    """Transactions that had arrived but were not committed when the episode ended."""
    seconds: float = 0.0
    """Wall-clock seconds the episode took (all what-if runs included)."""

    @property
    def chosen(self) -> list[str]:
        return [self.protocols[c] for c in self.choices]


def score_step(model: ChainModel, protocol: str, t1: float, settings: EnvSettings) -> float:
    """The step latency `protocol` would give from the model's state to t1 (on a clone,
    so the model itself does not move)."""
    sim = model.clone()
    sim.apply(ProtocolSwitch(protocol))
    t0 = sim.now
    sim.run_until(t1)
    return step_latency(sim, t0, t1, settings.reward)[2]


def best_index(scores: Sequence[float]) -> int:
    """Index of the lowest score; the first one on ties."""
    return min(range(len(scores)), key=lambda i: (scores[i], i))


def oracle_episode(scenario: Scenario, settings: EnvSettings | None = None,
                   protocols: Sequence[str] | None = None) -> OracleResult:
    """Run the greedy hindsight oracle over one scenario (see the module docstring);
    `protocols` default to the environment's actions."""
    settings = settings or EnvSettings()
    env = ChainTwinEnv(scenario, settings)
    protocols = tuple(env.protocols if protocols is None else protocols)
    if not protocols:
        raise ValueError("the oracle needs at least one protocol")
    action_of = {p: env.protocols.index(p) for p in protocols}  # ValueError if unknown
    env.reset(seed=scenario.seed)
    model = env.model
    assert model is not None
    result = OracleResult(protocols)
    start = time.perf_counter()
    done = False
    while not done:
        t1 = min(model.now + settings.step_seconds, scenario.duration)
        scores = tuple(score_step(model, p, t1, settings) for p in protocols)
        best = best_index(scores)
        _, _, done, _, info = env.step(action_of[protocols[best]])
        _check_replay(scores[best], float(info["latency"]), model.now)
        result.choices.append(best)
        result.actions.append(action_of[protocols[best]])
        result.scores.append(scores)
    result.latency = env.episode_latency()
    result.safety_violations = len(model.violations)
    result.uncommitted = model.uncommitted(model.now)
    result.seconds = time.perf_counter() - start
    return result


def _check_replay(predicted: float, real: float, now: float) -> None:
    """The real step must repeat the clone's: the model is deterministic, and an oracle
    whose what-if differs from the truth would not be one."""
    if not math.isclose(predicted, real, rel_tol=1e-9, abs_tol=1e-9):
        raise RuntimeError(f"oracle: the real step to t={now:g} gave latency {real!r}, "
                           f"its clone {predicted!r} (model not deterministic under clone)")


def switching_gain(oracle_latency: float, fixed_latencies: Sequence[float]) -> float:
    """(best fixed - oracle) / best fixed: the room for switching on a scenario."""
    best = min(fixed_latencies)
    if best <= 0:
        raise ValueError(f"switching gain needs a positive best fixed latency, got {best}")
    return (best - oracle_latency) / best


def gain_captured(policy_latency: float, oracle_latency: float, best_fixed: float) -> float:
    """(best fixed - policy) / (best fixed - oracle): the share of the oracle's gain a
    policy realises. Undefined (ValueError) where the oracle gains nothing."""
    room = best_fixed - oracle_latency
    if room <= 0:
        raise ValueError(f"no switching gain to capture (best fixed {best_fixed}, "
                         f"oracle {oracle_latency})")
    return (best_fixed - policy_latency) / room
