"""Gymnasium environment over the twin's model: one step = one decision period TS.

State: a registered encoder (twin.encoders; the paper's (F, N_L, N_H) by default).
Action: a consensus protocol of `EnvSettings.protocols` (any registered in
nodes.consensus; a third one is a registration and a setting, not an edit here).
Reward: minus the step's latency (see `step_latency`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from nodes.consensus import rules_for
from twin.encoders import EncoderSettings, StateEncoder, make_encoder
from twin.model import PROTOCOL_NAMES, ChainModel, ModelConfig, ProtocolSwitch, TwinObservation
from twin.scenarios import Scenario, WorkloadSpec

RewardKind = Literal["committed", "committed_and_waiting"]


class EnvSettings(BaseModel):
    """How the environment steps the model."""

    model_config = ConfigDict(extra="forbid")

    step_seconds: float = Field(default=10.0, gt=0)
    """TS: the twin decides every this many simulated seconds."""
    initial_protocol: str = "pbft"
    """Protocol the chain runs before the first decision."""
    protocols: tuple[str, ...] = PROTOCOL_NAMES
    """The actions, in order: protocols registered in nodes.consensus (`register`)."""
    model: ModelConfig = ModelConfig()
    """Fixed parameters of the simulated chain."""
    reward: RewardKind = "committed_and_waiting"
    """Step latency measure (see `step_latency`)."""
    encoder: EncoderSettings = EncoderSettings()
    """How observations become states (twin.encoders)."""

    @field_validator("protocols", "initial_protocol")
    @classmethod
    def _registered(cls, v: Any) -> Any:
        for name in ([v] if isinstance(v, str) else v):
            rules_for(name)  # raises ValueError naming the registered protocols
        if not isinstance(v, str) and (len(v) < 1 or len(set(v)) != len(v)):
            raise ValueError(f"protocols: need distinct names, got {v}")
        return v


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
        self.encoder: StateEncoder = encoder or make_encoder(self.settings.encoder)
        self.observation_space = self.encoder.space
        self.protocols = self.settings.protocols
        self.action_space = gym.spaces.Discrete(len(self.protocols))
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
