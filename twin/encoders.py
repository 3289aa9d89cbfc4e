"""State encoders: what a tabular agent calls "the same state" (twin paper, section 4).

An encoder maps a `TwinObservation` (the twin's estimate of the system, never the
physical system's ground truth) to a gymnasium observation and to a hashable key for
tabular agents. Encoders are registered by name and configured by `EncoderSettings`, so
an experiment file picks one (`env.encoder: {name: paper, mbps_bucket: 5}`) and a new one
is a registered class, not an edit of the environment.

The paper's S = (F, N_L, N_H): F whether a node has failed, N_L and N_H the lowest and
highest link speed. Whole-Mbit/s buckets (the default before) make almost every state of
a workload drawn afresh unseen (measured in issue 19: 5% of fresh WL1 states and 0% of
WL2's were in a WL1-trained table); the bucket size is therefore a setting, and the
figures report the share of decision states never seen in training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from twin.model import TwinObservation


class StateEncoder(Protocol):
    @property
    def space(self) -> gym.Space[Any]: ...  # read-only, so encoders may narrow its type

    def encode(self, obs: TwinObservation) -> np.ndarray: ...

    def key(self, obs: TwinObservation) -> tuple[int, ...]: ...


class EncoderSettings(BaseModel):
    """Which encoder and its bucket sizes."""

    model_config = ConfigDict(extra="forbid")

    name: str = "paper"
    """A registered encoder (`ENCODERS`)."""
    mbps_bucket: float = Field(default=1.0, gt=0)
    """Link speeds are counted in buckets of this many Mbit/s (1: the paper's whole
    Mbit/s)."""
    max_mbps: float = Field(default=100.0, gt=0)
    """Speeds above this fall in the top bucket."""


class _SpeedBuckets:
    """Link speeds counted in buckets of `mbps_bucket`, rounded, clipped to the top one."""

    def __init__(self, settings: EncoderSettings | None = None) -> None:
        s = settings or EncoderSettings()
        self.bucket = s.mbps_bucket
        self.top = int(s.max_mbps // s.mbps_bucket)

    def _bucket(self, mbps: float) -> int:
        return int(np.clip(round(mbps / self.bucket), 0, self.top))

    def key(self, obs: TwinObservation) -> tuple[int, ...]:
        raise NotImplementedError

    def encode(self, obs: TwinObservation) -> np.ndarray:
        return np.array(self.key(obs), dtype=np.int64)


class PaperStateEncoder(_SpeedBuckets):
    """S = (F, N_L, N_H); N_L, N_H = speed / bucket rounded, clipped to the top bucket."""

    def __init__(self, settings: EncoderSettings | None = None) -> None:
        super().__init__(settings)
        self.space = gym.spaces.MultiDiscrete([2, self.top + 1, self.top + 1])

    def key(self, obs: TwinObservation) -> tuple[int, ...]:
        return (int(not all(obs.up)), self._bucket(min(obs.link_mbps)),
                self._bucket(max(obs.link_mbps)))


class FailedAndSlowestEncoder(_SpeedBuckets):
    """S = (number of failed nodes, N_L): what decides between the protocols in the model
    (BigFoot's fast path waits for every validator; the slowest link sets the block
    transfer time), with fewer states to learn than the paper's triple."""

    def __init__(self, settings: EncoderSettings | None = None) -> None:
        super().__init__(settings)
        self.space = gym.spaces.MultiDiscrete([8, self.top + 1])

    def key(self, obs: TwinObservation) -> tuple[int, ...]:
        return (min(sum(not u for u in obs.up), 7), self._bucket(min(obs.link_mbps)))


ENCODERS: dict[str, Callable[[EncoderSettings], StateEncoder]] = {}
"""Registered encoders by name."""


def register(name: str, factory: Callable[[EncoderSettings], StateEncoder]) -> None:
    if name in ENCODERS:
        raise ValueError(f"encoder {name!r} is already registered")
    ENCODERS[name] = factory


def make_encoder(settings: EncoderSettings | None = None) -> StateEncoder:
    s = settings or EncoderSettings()
    try:
        return ENCODERS[s.name](s)
    except KeyError:
        raise ValueError(f"unknown state encoder {s.name!r}; known {sorted(ENCODERS)}") from None


register("paper", PaperStateEncoder)
register("failed_slowest", FailedAndSlowestEncoder)
