"""A trained DQN policy as an `Allocator`, in numpy only (no TensorFlow).

A saved policy is a directory: `policy.json` (the DQN and observation settings, the
action names, the layer sizes) and `weights.npz` (the eval_net's kernels and biases,
`w0, b0, w1, b1, ...`), written by `abn.dqn.DQNAgent.save`. Inference is three small
matrix products, so the shim's allocator needs no TensorFlow (which takes ~4 s to import)
and decides in microseconds (benchmarks/dqn.py).

The shim finds it by name: `get_allocator("dqn")` builds `DQNAllocator.from_env()`,
which loads the policy directory named by the `ABN_DQN_POLICY` environment variable.
Code that has a path (the live shim's future `policy:` setting) constructs
`DQNAllocator(path)` directly.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from abn.dqn_baselines import ACTION_NAMES, action_templates
from abn.dqn_env import ObservationSettings, encode
from abn.flows import FlowKey, FlowView

POLICY_ENV = "ABN_DQN_POLICY"
POLICY_JSON = "policy.json"
WEIGHTS_NPZ = "weights.npz"


@dataclass(frozen=True)
class QPolicy:
    """Q(s, .) of a saved eval_net: ReLU hidden layers, linear output."""

    weights: tuple[np.ndarray, ...]
    """Kernel, bias, kernel, bias, ... as Keras orders them (kernels are in x out)."""
    observation: ObservationSettings
    action_names: tuple[str, ...]
    meta: dict[str, Any]

    def q_values(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32)
        n = len(self.weights) // 2
        for i in range(n):
            x = x @ self.weights[2 * i] + self.weights[2 * i + 1]
            if i < n - 1:
                x = np.maximum(x, 0.0)
        return x

    def act(self, obs: np.ndarray) -> int:
        return int(np.argmax(self.q_values(obs)))


def write_policy(path: Path, weights: Sequence[np.ndarray], observation: ObservationSettings,
                 meta: dict[str, Any]) -> Path:
    """Write a policy directory (see the module docstring); returns it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {f"{'wb'[i % 2]}{i // 2}": np.asarray(w, dtype=np.float32)
                              for i, w in enumerate(weights)}
    np.savez(path / WEIGHTS_NPZ, **arrays)
    doc = {"observation": observation.model_dump(mode="json"),
           "action_names": list(ACTION_NAMES),
           "layers": [int(np.shape(w)[-1]) for w in weights[1::2]], **meta}
    (path / POLICY_JSON).write_text(json.dumps(doc, indent=1, sort_keys=True))
    return path


def load_policy(path: str | Path) -> QPolicy:
    """Read a policy directory; refuses one whose actions are not this code's."""
    path = Path(path)
    try:
        doc = json.loads((path / POLICY_JSON).read_text())
        with np.load(path / WEIGHTS_NPZ) as npz:
            n = len(npz.files) // 2
            weights = tuple(np.asarray(npz[f"{k}{i}"], dtype=np.float32)
                            for i in range(n) for k in "wb")
    except (OSError, KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable DQN policy ({exc})") from exc
    names = tuple(doc.get("action_names", ()))
    if names != ACTION_NAMES:
        raise ValueError(f"{path}: policy actions {names} differ from this code's "
                         f"{ACTION_NAMES}; retrain it")
    obs = ObservationSettings(**doc["observation"])
    if weights[0].shape[0] != obs.size or weights[-1].shape[-1] != len(ACTION_NAMES):
        raise ValueError(f"{path}: weights of shape {weights[0].shape}..{weights[-1].shape} do "
                         f"not fit {obs.size} inputs and {len(ACTION_NAMES)} actions")
    return QPolicy(weights, obs, names, doc)


class DQNAllocator:
    """The paper's Algorithm 2 at decision time: encode the flow table, pick the
    template with the highest Q-value, let it allocate (so the rates sum to at most
    C_r by construction)."""

    name = "dqn"

    def __init__(self, policy: str | Path | QPolicy) -> None:
        self.policy = policy if isinstance(policy, QPolicy) else load_policy(policy)
        self.templates = action_templates()
        self.last_action: int | None = None
        """The template chosen at the last call (for the shim's records)."""

    @classmethod
    def from_env(cls) -> DQNAllocator:
        path = os.environ.get(POLICY_ENV)
        if not path:
            raise ValueError(f"allocator 'dqn' needs a trained policy: set {POLICY_ENV} to a "
                             f"policy directory (written by abn.dqn), or construct "
                             f"abn.dqn_policy.DQNAllocator(path)")
        return cls(path)

    def allocate(self, flows: Sequence[FlowView], capacity_bps: float,
                 period_s: float) -> dict[FlowKey, float]:
        obs = encode(flows, capacity_bps, period_s, self.policy.observation)
        self.last_action = self.policy.act(obs)
        return self.templates[self.last_action].allocate(flows, capacity_bps, period_s)
