"""DQN for the ABN paper's bandwidth allocation (Algorithm 2) in TensorFlow/Keras.

Two networks of the paper's shape (two hidden layers of 20 units): eval_net estimates
Q(s, a) and is trained; target_net gives the bootstrap targets and is a copy of eval_net
refreshed every `target_update` train steps (fixed Q-targets). Transitions go into a
bounded replay buffer sampled uniformly. The train step and the Q-values of the next
state are one compiled `tf.function` call per environment step (eager Keras `fit` per
step is ~40x slower; benchmarks/dqn.py measures both).

TensorFlow is imported on first use, inside this module's functions, so importing
`abn.dqn` (or anything else in the project) does not pay its ~4 s. A saved agent is a
policy directory (`abn.dqn_policy`) that the numpy-only `dqn` allocator reads.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from abn.dqn_env import BandwidthEnv, ObservationSettings
from abn.dqn_policy import POLICY_JSON, load_policy, write_policy


class DQNSettings(BaseModel):
    """DQN hyper-parameters (saved beside the weights)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden: tuple[int, ...] = (20, 20)
    """Units per hidden layer: the paper's two layers of 20."""
    learning_rate: float = Field(default=0.001, gt=0)
    """Step size of the optimizer (the paper sweeps 0.1 .. 0.0001, Fig. 10)."""
    optimizer: Literal["rmsprop", "adam", "sgd"] = "rmsprop"
    """RMSprop, as the original DQN (Mnih et al. 2015)."""
    discount: float = Field(default=0.9, ge=0, lt=1)
    """gamma per slot; slim deadlines are 2-3 slots, so a short horizon suffices."""
    loss: Literal["huber", "mse"] = "huber"
    batch_size: int = Field(default=32, ge=1)
    replay_size: int = Field(default=10_000, ge=1)
    """Transitions kept; the oldest are overwritten."""
    learn_start: int = Field(default=500, ge=1)
    """Environment steps before the first train step (and at least one batch)."""
    train_every: int = Field(default=1, ge=1)
    """A train step every this many environment steps."""
    target_update: int = Field(default=200, ge=1)
    """Train steps between copies of eval_net into target_net."""
    epsilon_start: float = Field(default=1.0, ge=0, le=1)
    epsilon_end: float = Field(default=0.05, ge=0, le=1)
    epsilon_decay_steps: int = Field(default=10_000, ge=1)
    """Environment steps over which epsilon falls linearly to epsilon_end."""
    bootstrap_at_time_limit: bool = False
    """Whether the episode's last transition bootstraps from the state after it. No by
    default: the episode is the paper's observation time, over which the reward is
    summed, so nothing follows it; bootstrapping there, with no clock in the state, lets
    the final (empty) state's value feed itself and inflates every Q-value."""
    reward_scale: float = Field(default=0.01, gt=0)
    """Rewards are multiplied by this before learning (a slim flow is then +-0.1), which
    keeps Q-values near 1 for every learning rate."""

    @model_validator(mode="after")
    def _sizes(self) -> DQNSettings:
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must list positive layer sizes, got {self.hidden}")
        return self

    def epsilon(self, step: int) -> float:
        frac = min(step / self.epsilon_decay_steps, 1.0)
        return self.epsilon_start + (self.epsilon_end - self.epsilon_start) * frac


def tensorflow(threads: int | None = None) -> Any:
    """Import TensorFlow (quietly) and, if given, limit it to `threads` intra- and
    inter-op threads; that must happen before TensorFlow runs anything, so asking for
    a different count later raises."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    if threads is not None:
        cfg = tf.config.threading
        if (cfg.get_intra_op_parallelism_threads(), cfg.get_inter_op_parallelism_threads()) \
                != (threads, threads):
            try:
                cfg.set_intra_op_parallelism_threads(threads)
                cfg.set_inter_op_parallelism_threads(threads)
            except RuntimeError as exc:
                raise RuntimeError(f"cannot limit TensorFlow to {threads} threads: it is "
                                   f"already running ({exc}); set it first") from exc
    return tf


class ReplayBuffer:
    """Bounded ring of transitions in numpy arrays."""

    def __init__(self, capacity: int, obs_size: int) -> None:
        self.capacity = capacity
        self.obs = np.zeros((capacity, obs_size), dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_size), dtype=np.float32)
        self.action = np.zeros(capacity, dtype=np.int32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.terminal = np.zeros(capacity, dtype=np.float32)
        self.size = 0
        self._next = 0

    def add(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray,
            terminal: bool) -> None:
        i = self._next
        self.obs[i], self.next_obs[i] = obs, next_obs
        self.action[i], self.reward[i], self.terminal[i] = action, reward, float(terminal)
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        """(obs, action, reward, next_obs, terminal) of `n` transitions drawn uniformly."""
        idx = rng.integers(0, self.size, size=n)
        return (self.obs[idx], self.action[idx], self.reward[idx], self.next_obs[idx],
                self.terminal[idx])

    def sample_packed(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """The same as one float32 array, n x (obs, next_obs, action, reward, terminal):
        handing TensorFlow one array instead of five saves most of a call's overhead."""
        idx = rng.integers(0, self.size, size=n)
        return np.concatenate([self.obs[idx], self.next_obs[idx],
                               self.action[idx, None].astype(np.float32),
                               self.reward[idx, None], self.terminal[idx, None]], axis=1)


class DQNAgent:
    """eval_net + target_net, replay, epsilon-greedy acting; `act`, `observe` (store and
    maybe learn), `save`, `load`."""

    def __init__(self, n_inputs: int, n_actions: int, settings: DQNSettings | None = None,
                 seed: int = 0, observation: ObservationSettings | None = None,
                 threads: int | None = 1, jit_compile: bool = True) -> None:
        self.settings = s = settings or DQNSettings()
        self.n_inputs, self.n_actions, self.seed = n_inputs, n_actions, seed
        self.observation = observation or ObservationSettings()
        tf = self.tf = tensorflow(threads)
        import keras

        tf.random.set_seed(seed)
        self.rng = np.random.default_rng([seed, 0xD01])
        self.eval_net = self._net(keras, seed)
        self.target_net = self._net(keras, seed + 7919)
        self.sync_target()
        self.optimizer = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam,
                          "sgd": keras.optimizers.SGD}[s.optimizer](learning_rate=s.learning_rate)
        self.optimizer.build(self.eval_net.trainable_variables)
        self.replay = ReplayBuffer(s.replay_size, n_inputs)
        self.env_steps = 0
        self.train_steps = 0
        self._q = tf.function(self._q_impl, reduce_retracing=True)
        self._train = tf.function(self._train_impl, reduce_retracing=True,
                                  jit_compile=jit_compile)
        self._gamma = tf.constant(s.discount, tf.float32)

    def _net(self, keras: Any, seed: int) -> Any:
        init = keras.initializers.GlorotUniform
        layers = [keras.Input(shape=(self.n_inputs,))]
        layers += [keras.layers.Dense(n, activation="relu", kernel_initializer=init(seed + i))
                   for i, n in enumerate(self.settings.hidden)]
        layers.append(keras.layers.Dense(self.n_actions, kernel_initializer=init(seed + 99)))
        return keras.Sequential(layers)

    # ---- compiled pieces -----------------------------------------------------------
    def _q_impl(self, obs: Any) -> Any:
        return self.eval_net(obs[None, :], training=False)[0]

    def _train_impl(self, packed: Any, now_obs: Any) -> tuple[Any, Any]:
        tf = self.tf
        n = self.n_inputs
        obs, next_obs = packed[:, :n], packed[:, n:2 * n]
        action = tf.cast(packed[:, 2 * n], tf.int32)
        reward, terminal = packed[:, 2 * n + 1], packed[:, 2 * n + 2]
        q_next = tf.reduce_max(self.target_net(next_obs, training=False), axis=1)
        target = tf.stop_gradient(reward + self._gamma * (1.0 - terminal) * q_next)
        with tf.GradientTape() as tape:
            q = self.eval_net(obs, training=True)
            q_a = tf.gather(q, action, axis=1, batch_dims=1)
            err = target - q_a
            if self.settings.loss == "huber":
                a = tf.abs(err)
                loss = tf.reduce_mean(tf.where(a <= 1.0, 0.5 * err * err, a - 0.5))
            else:
                loss = tf.reduce_mean(err * err)
        variables = self.eval_net.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables,
                                           strict=True))
        return loss, self.eval_net(now_obs[None, :], training=False)[0]

    # ---- public --------------------------------------------------------------------
    def sync_target(self) -> None:
        for t, e in zip(self.target_net.weights, self.eval_net.weights, strict=True):
            t.assign(e)

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        return np.asarray(self._q(self.tf.constant(obs, self.tf.float32)))

    def greedy(self, q: np.ndarray) -> int:
        return int(np.argmax(q))

    def act(self, q: np.ndarray, epsilon: float) -> int:
        """Epsilon-greedy over the given Q-values."""
        if epsilon > 0 and self.rng.uniform() < epsilon:
            return int(self.rng.integers(self.n_actions))
        return self.greedy(q)

    def train_batch(self, packed: np.ndarray, now_obs: np.ndarray) -> tuple[Any, Any]:
        """One gradient step on a batch (`ReplayBuffer.sample_packed`); returns
        (loss, Q(now_obs)) as tensors."""
        tf = self.tf
        loss, q = self._train(tf.constant(packed), tf.constant(now_obs, tf.float32))
        self.train_steps += 1
        if self.train_steps % self.settings.target_update == 0:
            self.sync_target()
        return loss, q

    def observe(self, obs: np.ndarray, action: int, reward: float, next_obs: np.ndarray,
                terminal: bool) -> tuple[Any | None, np.ndarray]:
        """Store a transition and, when due, train; returns (loss tensor or None,
        Q(next_obs)) so the caller can act next without another network call."""
        s = self.settings
        self.replay.add(obs, action, reward * s.reward_scale, next_obs, terminal)
        self.env_steps += 1
        if (self.replay.size >= max(s.learn_start, s.batch_size)
                and self.env_steps % s.train_every == 0):
            loss, q = self.train_batch(self.replay.sample_packed(self.rng, s.batch_size),
                                       next_obs)
            return loss, np.asarray(q)
        return None, self.q_values(next_obs)

    def save(self, path: Path, meta: dict[str, Any] | None = None) -> Path:
        """Write the policy directory (eval_net weights + settings JSON)."""
        doc = {"dqn": self.settings.model_dump(mode="json"), "seed": self.seed,
               "n_inputs": self.n_inputs, "n_actions": self.n_actions,
               "train_steps": self.train_steps, "env_steps": self.env_steps, **(meta or {})}
        return write_policy(path, self.eval_net.get_weights(), self.observation, doc)

    @classmethod
    def load(cls, path: Path, threads: int | None = 1) -> DQNAgent:
        """An agent with the saved weights in both networks (replay and optimizer state
        are not saved: a loaded agent acts, or trains afresh from these weights)."""
        policy = load_policy(path)
        doc = json.loads((Path(path) / POLICY_JSON).read_text())
        agent = cls(doc["n_inputs"], doc["n_actions"], DQNSettings(**doc["dqn"]),
                    int(doc.get("seed", 0)), policy.observation, threads)
        agent.eval_net.set_weights(list(policy.weights))
        agent.sync_target()
        return agent


@dataclass(frozen=True)
class EpisodeLog:
    """What training records per episode."""

    episode: int
    schedule_seed: int
    reward: float
    epsilon: float
    losses: tuple[float, ...]
    """Loss of every train step in the episode, in order."""
    first_train_step: int
    """Global index (from 1) of the first of those train steps."""
    slim_finished: int
    slim_missed: int
    fat_finished: int
    fat_missed: int
    actions: tuple[int, ...]
    """How often each action was taken in the episode."""
    seconds: float


def train(env: BandwidthEnv, agent: DQNAgent, schedule_seeds: Iterable[int],
          on_episode: Callable[[EpisodeLog], None] | None = None) -> list[EpisodeLog]:
    """Train one episode per schedule seed (epsilon-greedy, learning every step)."""
    logs = []
    for ep, seed in enumerate(schedule_seeds):
        t0 = time.perf_counter()
        first = agent.train_steps + 1
        eps = agent.settings.epsilon(agent.env_steps)
        obs, _ = env.reset(seed=seed)
        q = agent.q_values(obs)
        losses: list[Any] = []
        counts = np.zeros(agent.n_actions, dtype=np.int64)
        while True:
            eps = agent.settings.epsilon(agent.env_steps)
            a = agent.act(q, eps)
            counts[a] += 1
            next_obs, r, terminated, truncated, _ = env.step(a)
            end = terminated or (truncated and not agent.settings.bootstrap_at_time_limit)
            loss, q = agent.observe(obs, a, r, next_obs, end)
            if loss is not None:
                losses.append(loss)
            obs = next_obs
            if terminated or truncated:
                break
        t = env.totals
        log = EpisodeLog(ep + 1, int(seed), t.reward, eps,
                         tuple(float(x) for x in losses), first, t.slim_finished,
                         t.slim_missed, t.fat_finished, t.fat_missed,
                         tuple(int(c) for c in counts), time.perf_counter() - t0)
        logs.append(log)
        if on_episode is not None:
            on_episode(log)
    return logs


def make_agent(env: BandwidthEnv, settings: DQNSettings, seed: int,
               threads: int | None = 1, jit_compile: bool = True) -> DQNAgent:
    """An agent sized for the environment's observation and actions."""
    obs = env.settings.observation
    return DQNAgent(obs.size, len(env.templates), settings, seed, obs, threads, jit_compile)
