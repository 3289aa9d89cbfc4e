"""Episodes of the twin's optimisers over a workload: the building blocks of fig4/fig5.

The physical chain (a `ChainTwinEnv` with sensor records on) and the digital twin
(`twin.digital`) are kept apart: every step TS the harness hands the twin a
`SensorFeed` and the policies decide from the twin only (its observation for the state
key, its `model_now()` for what-if). The harness itself may read the truth: it measures
the step latency (the env's reward), who was up, and the backlog left at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from twin.agentplus import AgentPlus
from twin.agents import QAgent
from twin.digital import DigitalTwin, PhysicalChain, TwinSettings
from twin.encoders import StateEncoder
from twin.env import ChainTwinEnv, EnvSettings
from twin.model import TwinObservation
from twin.scenarios import Scenario
from twin.whatif import WhatIfOptimiser

State = tuple[int, ...]


@dataclass
class DecisionContext:
    """What a policy may use to decide: the twin, never the physical chain."""

    twin: DigitalTwin
    encoder: StateEncoder
    """The environment's registered state encoder (keys come from the twin's view)."""
    protocols: tuple[str, ...]
    """The actions, in order."""


Policy = Callable[[DecisionContext, State], int]


class Learner(Protocol):
    """Anything trained online from real steps: a QAgent, or AgentPlus (which adds
    simulated counterfactuals)."""

    def train_step(self, state: tuple[int, ...], action: int, reward: float,
                   next_state: tuple[int, ...], done: bool) -> None: ...


@dataclass(frozen=True)
class StepRecord:
    """One decision step as the harness saw it (truth and the twin's view side by side)."""

    time: float
    """Decision time t0 (the step covers (t0, t0 + TS])."""
    protocol: str
    latency: float
    """Measured step latency (the env's reward measure, seconds)."""
    predicted: float | None
    """The twin's predicted step latency for the chosen protocol (run_episode(predict=True))."""
    all_up: bool
    """Every node up at t0, per the truth."""
    estimate: TwinObservation
    """The twin's observation at t0."""
    truth: TwinObservation
    """The physical model's ground truth at t0 (for the harness only)."""


@dataclass
class EpisodeResult:
    latency: float
    """Transaction-weighted mean latency over the episode (seconds)."""
    decision_seconds: float
    """Wall-clock seconds the optimiser spent deciding."""
    actions: list[int]
    safety_violations: int
    uncommitted: int = 0
    """Transactions arrived but not committed at the end (physical model, truth)."""
    steps: list[StepRecord] = field(default_factory=list)
    twin_seconds: float = 0.0
    """Wall-clock seconds spent feeding and calibrating the twin."""
    predict_seconds: float = 0.0
    """Wall-clock seconds spent predicting (run_episode(predict=True))."""


def _with_records(settings: EnvSettings) -> EnvSettings:
    """The physical chain's settings with every node's sensor records on."""
    if settings.model.records == "all":
        return settings
    return settings.model_copy(update={"model": settings.model.model_copy(
        update={"records": "all"})})


def make_twin(scenario: Scenario, settings: EnvSettings,
              twin: TwinSettings | None = None) -> DigitalTwin:
    """A twin from what a deployer knows: the node count and the chain's configuration
    (the scenario is used for its node count only)."""
    return DigitalTwin(scenario.n_nodes, settings.model, twin, settings.initial_protocol)


def run_episode(scenario: Scenario, settings: EnvSettings, policy: Policy,
                learner: Learner | None = None, *, predict: bool = False,
                twin: TwinSettings | None = None, predict_scenarios: int = 1,
                predict_seed: int = 0) -> EpisodeResult:
    """One pass over the scenario; `learner` (if given) is trained online from real steps.

    `predict`: also record the twin's predicted step latency for each chosen protocol
    (simulation time, so off by default); `twin` configures the twin (its generator
    draws the predicted futures)."""
    env = ChainTwinEnv(scenario, _with_records(settings))
    env.reset(seed=scenario.seed)
    assert env.model is not None
    physical = env.model
    chain = PhysicalChain(physical)
    dt = make_twin(scenario, settings, twin)
    ctx = DecisionContext(dt, env.encoder, env.protocols)
    rng = np.random.default_rng([predict_seed, 0x9E])
    res = EpisodeResult(0.0, 0.0, [], 0)

    def sense() -> State:
        t = time.perf_counter()
        dt.ingest(chain.feed())
        key = env.encoder.key(dt.observation())
        res.twin_seconds += time.perf_counter() - t
        return key

    key = sense()
    done = False
    while not done:
        t = time.perf_counter()
        a = policy(ctx, key)
        res.decision_seconds += time.perf_counter() - t
        protocol = env.protocols[a]
        predicted = None
        if predict:
            t = time.perf_counter()
            predicted = dt.predict(protocol, settings.step_seconds, rng, predict_scenarios)
            res.predict_seconds += time.perf_counter() - t
        truth = physical.observe()
        estimate = dt.observation()
        dt.note_command(protocol)
        res.actions.append(a)
        _, reward, done, _, _ = env.step(a)
        res.steps.append(StepRecord(truth.now, protocol, -float(reward), predicted,
                                    all(truth.up), estimate, truth))
        nxt = sense()
        if learner is not None:
            learner.train_step(key, a, reward, nxt, done)
        key = nxt
    res.latency = env.episode_latency()
    res.safety_violations = len(physical.violations)
    res.uncommitted = physical.uncommitted(physical.now)
    return res


def fixed(action: int) -> Policy:
    return lambda ctx, key: action


def q_policy(agent: QAgent, epsilon: float = 0.0) -> Policy:
    return lambda ctx, key: agent.act(key, epsilon)


def whatif_policy(opt: WhatIfOptimiser) -> Policy:
    """What-if from the twin's estimated present (never the physical model)."""
    return lambda ctx, key: opt.act(ctx.twin.model_now())


def agent_plus_policy(ap: AgentPlus) -> Policy:
    """Agent+; the twin's model is built only when what-if is consulted."""
    return lambda ctx, key: ap.act(key, ctx.twin.model_now)


def train(agent: QAgent, scenario: Scenario, settings: EnvSettings, episodes: int,
          on_episode: Callable[[int, EpisodeResult], None] | None = None,
          epsilon_episode: int = 0) -> list[EpisodeResult]:
    """Q-learning over repeated passes of one workload (the paper's WL1 training);
    episode i explores with the agent's epsilon of episode `epsilon_episode` + i."""
    out = []
    for ep in range(episodes):
        eps = agent.epsilon(epsilon_episode + ep)
        res = run_episode(scenario, settings, q_policy(agent, eps), agent)
        out.append(res)
        if on_episode:
            on_episode(ep, res)
    return out
