"""Deadline-aware allocators over `FlowView`s: the DQN's action templates and its
independent baselines (issue 15).

They implement `abn.allocators.Allocator`, so the same object allocates in the DQN
environment (`abn.dqn_env`) and in the live shim. Each orders the flows by a rule and
fills them in turn: a flow gets all it can use this period (`remaining * 8 / period_s`,
or everything left when its size is unknown) while capacity lasts. Filling front to back
is never worse than spreading a flow's need over its remaining slots here, because
capacity left unused in a period is lost.

Rules for flows the live table may hold: an unknown size counts as unbounded (it sorts
after every known size and takes what is left); no deadline, or a missed one (0 or fewer
slots left), sorts after every live deadline. Ties break by key, so results are
deterministic.

The TCP-like baseline *senders* (Cubic-like, BBR-like) are not allocators: they do not
see deadlines and may offer more than C_r; they live in `abn.tcp_models`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from abn.allocators import AverageAllocator, _check
from abn.flows import FlowKey, FlowView

_INF = math.inf


def _deadline(f: FlowView) -> float:
    return float(f.slots_left) if f.slots_left is not None and f.slots_left > 0 else _INF


def _size(f: FlowView) -> float:
    return float(f.remaining_bytes) if f.remaining_bytes is not None else _INF


def edf_order(f: FlowView) -> tuple[float, float, FlowKey]:
    """Earliest deadline first, then smallest remaining, then key."""
    return (_deadline(f), _size(f), f.key)


def srpt_order(f: FlowView) -> tuple[float, float, FlowKey]:
    """Smallest remaining first, then earliest deadline, then key."""
    return (_size(f), _deadline(f), f.key)


def fill(order: Iterable[FlowView], capacity_bps: float, period_s: float,
         rates: dict[FlowKey, float] | None = None) -> dict[FlowKey, float]:
    """Give each flow in `order` all it can use this period while capacity lasts;
    flows already in `rates` keep theirs and only what they left is shared out."""
    rates = {} if rates is None else rates
    left = max(capacity_bps - sum(rates.values()), 0.0)
    for f in order:
        if f.key in rates:
            continue
        need = _size(f) * 8 / period_s
        give = min(need, left)
        rates[f.key] = give
        left -= give
    return rates


def _in_input_order(flows: Sequence[FlowView], rates: dict[FlowKey, float]) -> dict[FlowKey, float]:
    return {f.key: rates.get(f.key, 0.0) for f in flows}


class EdfAllocator:
    """Earliest deadline first: the greedy the issue asks the DQN to be compared with.
    Optimal when every flow can be finished; in overload it keeps serving flows that
    will miss anyway."""

    name = "edf"

    def allocate(self, flows: Sequence[FlowView], capacity_bps: float,
                 period_s: float) -> dict[FlowKey, float]:
        _check(flows, capacity_bps, period_s)
        return _in_input_order(flows, fill(sorted(flows, key=edf_order), capacity_bps,
                                           period_s))


class SrptAllocator:
    """Smallest remaining first: finishes the most flows soonest and so favours slim
    flows (small) over fat ones, whatever their deadlines."""

    name = "srpt"

    def allocate(self, flows: Sequence[FlowView], capacity_bps: float,
                 period_s: float) -> dict[FlowKey, float]:
        _check(flows, capacity_bps, period_s)
        return _in_input_order(flows, fill(sorted(flows, key=srpt_order), capacity_bps,
                                           period_s))


def admitted(flows: Sequence[FlowView], capacity_bps: float, period_s: float) -> list[FlowView]:
    """The largest set of flows with known sizes and live deadlines that can all still
    finish if served EDF at full capacity (Moore-Hodgson: walk in deadline order and,
    whenever the set so far would miss, drop its largest flow). Ignores flows yet to
    arrive, so it is optimistic under arrivals."""
    slot_bytes = capacity_bps * period_s / 8
    live = sorted((f for f in flows if f.remaining_bytes is not None and f.remaining_bytes > 0
                   and f.slots_left is not None and f.slots_left > 0), key=edf_order)
    chosen: list[FlowView] = []
    work = 0.0
    for f in live:
        assert f.remaining_bytes is not None and f.slots_left is not None
        chosen.append(f)
        work += f.remaining_bytes
        if work > f.slots_left * slot_bytes:
            largest = max(chosen, key=lambda g: (_size(g), g.key))
            chosen.remove(largest)
            work -= _size(largest)
    return chosen


class EdfAdmitAllocator:
    """EDF over the flows that can all still finish (`admitted`), then EDF over the
    rest with what is left: in overload it gives up the flows that would take the most
    capacity, not the ones that happen to be due first."""

    name = "edf_admit"

    def allocate(self, flows: Sequence[FlowView], capacity_bps: float,
                 period_s: float) -> dict[FlowKey, float]:
        _check(flows, capacity_bps, period_s)
        rates = fill(admitted(flows, capacity_bps, period_s), capacity_bps, period_s)
        return _in_input_order(flows, fill(sorted(flows, key=edf_order), capacity_bps,
                                           period_s, rates))


def action_templates() -> tuple[AverageAllocator | EdfAllocator | EdfAdmitAllocator
                                | SrptAllocator, ...]:
    """The DQN's discrete actions, by index (docs/decisions.md, "DQN action space
    (issue 15)"); the order is part of a saved policy's meaning."""
    return (AverageAllocator(), EdfAllocator(), EdfAdmitAllocator(), SrptAllocator())


ACTION_NAMES: tuple[str, ...] = tuple(a.name for a in action_templates())
