"""Episodes of the twin's optimisers over a workload: the building blocks of fig4/fig5."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from twin.agentplus import AgentPlus
from twin.agents import QAgent
from twin.env import ChainTwinEnv, EnvSettings
from twin.scenarios import Scenario
from twin.whatif import WhatIfOptimiser

Policy = Callable[[ChainTwinEnv, tuple[int, ...]], int]


class Learner(Protocol):
    """Anything trained online from real steps: a QAgent, or AgentPlus (which adds
    simulated counterfactuals)."""

    def train_step(self, state: tuple[int, ...], action: int, reward: float,
                   next_state: tuple[int, ...], done: bool) -> None: ...


@dataclass
class EpisodeResult:
    latency: float
    """Transaction-weighted mean latency over the episode (seconds)."""
    decision_seconds: float
    """Wall-clock seconds the optimiser spent deciding."""
    actions: list[int]
    safety_violations: int


def run_episode(scenario: Scenario, settings: EnvSettings, policy: Policy,
                learner: Learner | None = None) -> EpisodeResult:
    """One pass over the scenario; `learner` (if given) is trained online from real steps."""
    env = ChainTwinEnv(scenario, settings)
    env.reset(seed=scenario.seed)
    key = env.state_key()
    spent = 0.0
    actions: list[int] = []
    done = False
    while not done:
        t = time.perf_counter()
        a = policy(env, key)
        spent += time.perf_counter() - t
        actions.append(a)
        _, reward, done, _, info = env.step(a)
        nxt = info["key"]
        if learner is not None:
            learner.train_step(key, a, reward, nxt, done)
        key = nxt
    assert env.model is not None
    return EpisodeResult(env.episode_latency(), spent, actions, len(env.model.violations))


def fixed(action: int) -> Policy:
    return lambda env, key: action


def q_policy(agent: QAgent, epsilon: float = 0.0) -> Policy:
    return lambda env, key: agent.act(key, epsilon)


def whatif_policy(opt: WhatIfOptimiser) -> Policy:
    def act(env: ChainTwinEnv, key: tuple[int, ...]) -> int:
        assert env.model is not None
        return opt.act(env.model)
    return act


def agent_plus_policy(ap: AgentPlus) -> Policy:
    def act(env: ChainTwinEnv, key: tuple[int, ...]) -> int:
        assert env.model is not None
        return ap.act(key, env.model)
    return act


def train(agent: QAgent, scenario: Scenario, settings: EnvSettings, episodes: int,
          on_episode: Callable[[int, EpisodeResult], None] | None = None) -> list[EpisodeResult]:
    """Q-learning over repeated passes of one workload (the paper's WL1 training)."""
    out = []
    for ep in range(episodes):
        res = run_episode(scenario, settings, q_policy(agent, agent.epsilon(ep)), agent)
        out.append(res)
        if on_episode:
            on_episode(ep, res)
    return out
