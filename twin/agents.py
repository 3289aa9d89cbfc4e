"""Tabular Q-learning over the encoder's state keys (twin paper, section 4)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


class QSettings(BaseModel):
    """Q-learning hyper-parameters."""

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = Field(default=0.3, gt=0, le=1)
    """alpha in Q <- Q + alpha (target - Q)."""
    discount: float = Field(default=0.5, ge=0, lt=1)
    """gamma: the next step's latency still depends on today's backlog."""
    epsilon_start: float = Field(default=1.0, ge=0, le=1)
    """Exploration rate in the first training episode."""
    epsilon_end: float = Field(default=0.02, ge=0, le=1)
    """Exploration rate from `epsilon_decay_episodes` on."""
    epsilon_decay_episodes: int = Field(default=30, ge=1)
    """Episodes over which epsilon decays linearly."""


class QAgent:
    """Q-table keyed by state tuples; counts real and simulated updates per action."""

    def __init__(self, n_actions: int, settings: QSettings | None = None, seed: int = 0) -> None:
        self.n_actions = n_actions
        self.settings = settings or QSettings()
        self.rng = np.random.default_rng([seed, 0xA6])
        self.q: dict[tuple[int, ...], np.ndarray] = {}
        self.tries: dict[tuple[int, ...], np.ndarray] = {}
        """Per state and action: updates from real steps plus simulated (what-if) ones."""

    def epsilon(self, episode: int) -> float:
        s = self.settings
        frac = min(episode / s.epsilon_decay_episodes, 1.0)
        return s.epsilon_start + (s.epsilon_end - s.epsilon_start) * frac

    def values(self, state: tuple[int, ...]) -> np.ndarray:
        v = self.q.get(state)
        if v is None:
            v = self.q[state] = np.zeros(self.n_actions)
            self.tries[state] = np.zeros(self.n_actions, dtype=np.int64)
        return v

    def act(self, state: tuple[int, ...], epsilon: float = 0.0) -> int:
        """Epsilon-greedy; ties (e.g. an unseen state) are broken at random."""
        if epsilon > 0 and self.rng.uniform() < epsilon:
            return int(self.rng.integers(self.n_actions))
        v = self.values(state)
        best = np.flatnonzero(v == v.max())
        return int(best[0] if len(best) == 1 else self.rng.choice(best))

    def train_step(self, state: tuple[int, ...], action: int, reward: float,
                   next_state: tuple[int, ...], done: bool) -> None:
        self.update(state, action, reward + self.bootstrap(next_state, done))

    def bootstrap(self, next_state: tuple[int, ...], done: bool) -> float:
        """gamma * max_a Q(next_state, a), or 0 at the end of an episode."""
        return 0.0 if done else self.settings.discount * float(self.values(next_state).max())

    def update(self, state: tuple[int, ...], action: int, target: float) -> None:
        """Move Q(state, action) towards target (one real or simulated sample)."""
        v = self.values(state)
        v[action] += self.settings.learning_rate * (target - v[action])
        self.tries[state][action] += 1

    def untried(self, state: tuple[int, ...], min_tries: int = 1) -> bool:
        t = self.tries.get(state)
        return t is None or bool((t < min_tries).any())

    def save(self, path: Path) -> None:
        data = {"settings": self.settings.model_dump(), "n_actions": self.n_actions,
                "q": [[list(k), v.tolist(), self.tries[k].tolist()] for k, v in self.q.items()]}
        path.write_text(json.dumps(data))

    @classmethod
    def load(cls, path: Path, seed: int = 0) -> QAgent:
        data = json.loads(path.read_text())
        agent = cls(data["n_actions"], QSettings(**data["settings"]), seed)
        for k, v, t in data["q"]:
            agent.q[tuple(k)] = np.array(v, dtype=float)
            agent.tries[tuple(k)] = np.array(t, dtype=np.int64)
        return agent

    def copy(self, seed: int) -> QAgent:
        other = QAgent(self.n_actions, self.settings, seed)
        other.q = {k: v.copy() for k, v in self.q.items()}
        other.tries = {k: v.copy() for k, v in self.tries.items()}
        return other
