"""Gymnasium environment over the twin's model: one step = one decision period TS.

State S = (F, N_L, N_H) as in the twin paper (F: a node has failed; N_L, N_H: the lowest
and highest link speed in Mbit/s, rounded). The encoder is pluggable: an encoder maps a
`TwinObservation` to an observation of its own space, and to a hashable key for tabular
agents. Action: consensus protocol. Reward: minus the average latency of the
transactions committed during the step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from twin.model import PROTOCOL_NAMES, ChainModel, ModelConfig, ProtocolSwitch, TwinObservation
from twin.scenarios import Scenario, WorkloadSpec

RewardKind = Literal["committed", "committed_and_waiting"]


class StateEncoder(Protocol):
    @property
    def space(self) -> gym.Space[Any]: ...  # read-only, so encoders may narrow its type

    def encode(self, obs: TwinObservation) -> np.ndarray: ...

    def key(self, obs: TwinObservation) -> tuple[int, ...]: ...


class PaperStateEncoder:
    """S = (F, N_L, N_H), speeds rounded to whole Mbit/s and clipped to max_mbps."""

    def __init__(self, max_mbps: int = 100) -> None:
        self.max_mbps = max_mbps
        self.space = gym.spaces.MultiDiscrete([2, max_mbps + 1, max_mbps + 1])

    def key(self, obs: TwinObservation) -> tuple[int, ...]:
        f = int(not all(obs.up))
        lo = int(np.clip(round(min(obs.link_mbps)), 0, self.max_mbps))
        hi = int(np.clip(round(max(obs.link_mbps)), 0, self.max_mbps))
        return (f, lo, hi)

    def encode(self, obs: TwinObservation) -> np.ndarray:
        return np.array(self.key(obs), dtype=np.int64)


class EnvSettings(BaseModel):
    """How the environment steps the model."""

    model_config = ConfigDict(extra="forbid")

    step_seconds: float = Field(default=10.0, gt=0)
    """TS: the twin decides every this many simulated seconds."""
    initial_protocol: str = "pbft"
    """Protocol the chain runs before the first decision."""
    model: ModelConfig = ModelConfig()
    """Fixed parameters of the simulated chain."""
    reward: RewardKind = "committed_and_waiting"
    """Step latency measure (see `step_latency`)."""


@dataclass
class StepOutcome:
    time: float
    protocol: str
    tx: int
    latency_sum: float

    @property
    def latency(self) -> float:
        return self.latency_sum / self.tx if self.tx else 0.0


def step_latency(model: ChainModel, t0: float, t1: float,
                 kind: RewardKind = "committed_and_waiting") -> tuple[int, float, float]:
    """(committed tx, their latency sum, the step's average latency) for (t0, t1].

    'committed' is the paper's measure: the mean latency of the transactions committed
    in the step. Measured over a short step it rewards committing *less* (the oldest
    backlog is left for later), which misleads a short-sighted optimiser. With
    'committed_and_waiting' the transactions still waiting at the end of the step count
    with their age so far, so deferring work no longer looks cheap. Without commits, the
    waiting transactions' mean age is used either way, so a stall is penalised.
    """
    n, s = model.latency_between(t0, t1)
    pn, ps = model.pending_age(t1)
    if kind == "committed_and_waiting":
        total = n + pn
        return n, s, ((s + ps) / total if total else 0.0)
    if n:
        return n, s, s / n
    return 0, 0.0, (ps / pn if pn else 0.0)


class ChainTwinEnv(gym.Env[np.ndarray, np.int64]):
    """The chain under a workload; reset draws a scenario (or replays a fixed one)."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, workload: WorkloadSpec | Scenario, settings: EnvSettings | None = None,
                 encoder: StateEncoder | None = None) -> None:
        self.settings = settings or EnvSettings()
        self.workload = workload
        self.encoder: StateEncoder = encoder or PaperStateEncoder()
        self.observation_space = self.encoder.space
        self.action_space = gym.spaces.Discrete(len(PROTOCOL_NAMES))
        self.protocols = PROTOCOL_NAMES
        self.model: ChainModel | None = None
        self.outcomes: list[StepOutcome] = []

    def _scenario(self) -> Scenario:
        if isinstance(self.workload, Scenario):
            return self.workload
        seed = int(self.np_random.integers(2**31 - 1))
        return self.workload.scenario(seed)

    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        scenario = (options or {}).get("scenario") or self._scenario()
        self.model = ChainModel(scenario, self.settings.model, self.settings.initial_protocol)
        self.outcomes = []
        obs = self.model.observe()
        return self.encoder.encode(obs), {"key": self.encoder.key(obs)}

    def observation(self) -> TwinObservation:
        assert self.model is not None, "call reset() first"
        return self.model.observe()

    def state_key(self) -> tuple[int, ...]:
        return self.encoder.key(self.observation())

    def step(self, action: int | np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        assert self.model is not None, "call reset() first"
        model = self.model
        protocol = self.protocols[int(action)]
        model.apply(ProtocolSwitch(protocol))
        t0 = model.now
        t1 = min(t0 + self.settings.step_seconds, model.scenario.duration)
        model.run_until(t1)
        n, s, lat = step_latency(model, t0, t1, self.settings.reward)
        self.outcomes.append(StepOutcome(t1, protocol, n, s))
        obs = model.observe()
        done = t1 >= model.scenario.duration - 1e-9
        info = {"latency": lat, "tx": n, "latency_sum": s, "protocol": protocol,
                "key": self.encoder.key(obs), "safety_violations": len(model.violations)}
        return self.encoder.encode(obs), -float(lat), done, False, info

    def episode_latency(self) -> float:
        """Transaction-weighted mean latency over the steps so far."""
        n = sum(o.tx for o in self.outcomes)
        return sum(o.latency_sum for o in self.outcomes) / n if n else 0.0
