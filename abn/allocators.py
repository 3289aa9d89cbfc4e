"""Bandwidth allocators: given the flows a middlebox sees, the rate each may send at.

One interface, `Allocator.allocate(flows, capacity_bps, period_s)`, over `FlowView`s only
(no packets, no queues), so an allocator runs the same on the live shim's table and on a
recorded one. Allocators are found by name (`get_allocator`); "dqn" (the paper's
Algorithm 2) loads the trained policy that ABN_DQN_POLICY names (abn/dqn_policy.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from abn.flows import FlowKey, FlowView


class Allocator(Protocol):
    name: str

    def allocate(self, flows: Sequence[FlowView], capacity_bps: float,
                 period_s: float) -> dict[FlowKey, float]:
        """A rate in bit/s for every flow given, for the next period of `period_s`
        seconds; the rates sum to at most `capacity_bps` (C_r, see residual_capacity)."""
        ...


def residual_capacity(capacity_bps: float, non_tcp_bps: float, control_bps: float) -> float:
    """C_r, the paper's equation (1): what is left to allocate after non-TCP traffic
    (which no allocation governs) and control traffic (ACKs, served first); never < 0."""
    for name, value in (("capacity_bps", capacity_bps), ("non_tcp_bps", non_tcp_bps),
                        ("control_bps", control_bps)):
        if not value >= 0:
            raise ValueError(f"{name} must be a non-negative number, got {value}")
    return max(capacity_bps - non_tcp_bps - control_bps, 0.0)


def _check(flows: Sequence[FlowView], capacity_bps: float, period_s: float) -> None:
    if not capacity_bps >= 0:
        raise ValueError(f"capacity_bps must be a non-negative number, got {capacity_bps}")
    if not period_s > 0:
        raise ValueError(f"period_s must be positive, got {period_s}")
    keys = [f.key for f in flows]
    if len(set(keys)) != len(keys):
        raise ValueError("the same flow key appears twice in the flows given")


class AverageAllocator:
    """Algorithm 1 (private network): urgent flows first, then equal shares.

    Following the paper (section 4.1): a flow is about to time out when exactly one
    slot is left (required slots minus timer == 1). It first gets what finishes it in
    that slot, remaining bytes * 8 / period_s; the other flows share what is left
    equally. Arrivals and departures change N and so the shares at the next call.

    Decisions where the paper is silent:
    - Urgent flows whose needs exceed C_r are served smallest need first (ties by key),
      each capped by what is left, so as many as possible finish (the model's reward
      counts finished flows); then nothing is left for the equal shares.
    - Only flows with a known, non-zero remaining size can be urgent; a flow with a
      deadline but unknown size, or nothing left to send, shares equally.
    - A flow past its deadline (0 or fewer slots left) gets no priority: it shares
      equally, rather than being starved, until the table drops it when idle.
    - A finished flow keeps its share until the table drops it, as in the paper,
      where a flow leaves only when a period passes without its data.
    - Needs are in payload bits; header overhead is not added.
    - Capacity an urgent-only table does not need is left unallocated.
    """

    name = "average"

    def allocate(self, flows: Sequence[FlowView], capacity_bps: float,
                 period_s: float) -> dict[FlowKey, float]:
        _check(flows, capacity_bps, period_s)
        left = float(capacity_bps)
        urgent = [f for f in flows
                  if f.slots_left == 1 and f.remaining_bytes is not None and f.remaining_bytes > 0]
        rates: dict[FlowKey, float] = {}
        for flow in sorted(urgent, key=lambda f: (f.remaining_bytes, f.key)):
            assert flow.remaining_bytes is not None
            give = min(flow.remaining_bytes * 8 / period_s, left)
            rates[flow.key] = give
            left -= give
        rest = [f for f in flows if f.key not in rates]
        share = left / len(rest) if rest else 0.0
        rates.update((f.key, share) for f in rest)
        return {f.key: rates[f.key] for f in flows}


def _dqn_from_environment() -> Allocator:
    """The paper's DQN (Algorithm 2) from the policy named by ABN_DQN_POLICY; imported
    only when asked for (abn.dqn_policy is numpy-only, no TensorFlow)."""
    from abn.dqn_policy import DQNAllocator

    return DQNAllocator.from_env()


_ALLOCATORS: dict[str, Callable[[], Allocator]] = {"average": AverageAllocator,
                                                   "dqn": _dqn_from_environment}


def register_allocator(name: str, factory: Callable[[], Allocator]) -> None:
    """Make an allocator available by name; a name is taken once."""
    if name in _ALLOCATORS:
        raise ValueError(f"an allocator named {name!r} is already registered")
    _ALLOCATORS[name] = factory


def available_allocators() -> list[str]:
    return sorted(_ALLOCATORS)


def get_allocator(name: str) -> Allocator:
    """A new allocator of the given name; an unknown name raises ValueError listing
    the known ones."""
    try:
        factory = _ALLOCATORS[name]
    except KeyError:
        raise ValueError(
            f"unknown allocator {name!r}; known allocators: {', '.join(available_allocators())}"
        ) from None
    return factory()
