"""The ABN paper's public-network model (sections 3.4, 4.2-4.3) as a Gymnasium env.

A middlebox has C_r (`capacity_bps`) to share every time slot (`slot_s`). Fat flows
(bulk background) and slim flows (blockchain consensus) arrive with a data size, a
deadline in slots and a reward. Each slot the agent allocates; then every flow that has
no data left earns its reward (finished in time), every flow whose last slot passed with
data left earns minus its reward (timed out, and leaves), the others earn 0. Slim
rewards must exceed fat ones in magnitude (the paper's rule iv; checked).

State (`encode`, shared with the live `dqn` allocator so both see the same thing): the
flows as `FlowView`s, in earliest-deadline order, the first `max_flows` of them, two
floats each, then the flow count; absent rows are 0. Per flow:
- slots left / `horizon_slots`, clipped to [0, 1]; no deadline or a missed one reads 1;
- sqrt(remaining / bytes-per-slot-at-C_r / `work_clip_slots`), clipped to [0, 1]
  (square root so slim flows, a few percent of a slot, are not all near 0; an unknown
  size reads 1). A present flow always has data left, so 0 means "no flow";
- last: number of flows / `count_clip`, clipped to 1.
Flow class is not in the state: the live table does not know it either; size and
deadline tell the two apart.

Action: Discrete over allocation templates (`abn.dqn_baselines.action_templates`:
average, EDF, EDF over the flows that can still finish, smallest-remaining-first);
each turns the flows into rates summing to at most C_r. Why this discretisation:
docs/decisions.md, "DQN action space (issue 15)". `step_rates` takes any allocation
with sum <= C_r instead (the baselines, the live allocator replayed), and
`step_senders` runs senders that ignore C_r (the TCP-like models in `abn.tcp_models`)
through a fluid drop-tail bottleneck with a `buffer_s` queue, in sub-steps of `rtt_s`.

Episodes last `episode_slots`; flows unfinished at the end earn nothing (counted in
`totals.unfinished_at_end`). The end is a time limit (`truncated`), never `terminated`.
Randomness comes only from `self.np_random` (sizes, deadlines), so an episode is a
function of its reset seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Protocol

import gymnasium as gym
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from abn.allocators import Allocator
from abn.dqn_baselines import ACTION_NAMES, action_templates, edf_order
from abn.flows import FlowKey, FlowView

_DONE_BYTES = 0.5
"""A flow with less than this left (fluid rounding) has finished."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FlowClass(_Frozen):
    """How the flows of one class (slim or fat) are drawn."""

    size_bytes: int = Field(gt=0)
    """Mean data size."""
    size_jitter: float = Field(default=0.0, ge=0, lt=1)
    """Sizes are uniform in size_bytes * (1 +- size_jitter)."""
    deadline_slots: tuple[int, int]
    """Deadline in slots from arrival, uniform in this inclusive range (1 = the arrival
    slot is the only one)."""
    reward: float = Field(gt=0)
    """Earned when the flow finishes in time; minus this when it times out with data left."""

    @model_validator(mode="after")
    def _range(self) -> FlowClass:
        lo, hi = self.deadline_slots
        if not 1 <= lo <= hi:
            raise ValueError(f"deadline_slots must be 1 <= min <= max, got {self.deadline_slots}")
        return self


class PaperSchedule(_Frozen):
    """The paper's Fig. 11 traffic: one slim and the fat background flows at the start,
    then every `round_slots` a consensus round of slim flows, `group` (the PBFT
    validators) times the stage number, the stage rising every `stage_slots` up to
    `max_groups`."""

    kind: Literal["paper"] = "paper"
    initial_slim: int = Field(default=1, ge=0)
    fat_flows: int = Field(default=2, ge=0)
    """Fat background flows present from slot 0 (the paper's two)."""
    renew_fat: bool = True
    """A fat flow that finishes or times out is replaced at the next slot, so the
    background never goes away."""
    group: int = Field(default=4, ge=1)
    """Slim flows come in multiples of this: the paper's 4 PBFT nodes."""
    round_slots: int = Field(default=2, ge=1)
    """A consensus round (a batch of slim flows) every this many slots, from slot 1."""
    stage_slots: int = Field(default=25, ge=1)
    """Slots per stage; stage k (from 1) sends k * group slim flows per round."""
    max_groups: int = Field(default=8, ge=1)
    """Stages stop growing here: at most max_groups * group slim flows per round."""


class ExplicitArrival(_Frozen):
    slot: int = Field(ge=0)
    kind: Literal["slim", "fat"]
    size_bytes: int = Field(gt=0)
    deadline_slots: int = Field(ge=1)


class ExplicitSchedule(_Frozen):
    """A fixed list of flows (toy cases with a known best allocation); rewards come
    from the flow's class."""

    kind: Literal["explicit"] = "explicit"
    arrivals: tuple[ExplicitArrival, ...]


class ObservationSettings(_Frozen):
    """How `encode` turns a flow table into the DQN's input (saved with a policy)."""

    max_flows: int = Field(default=32, ge=1)
    """Flows in the state (the most urgent ones); the input has 2 * max_flows + 1 floats."""
    horizon_slots: int = Field(default=8, ge=1)
    """Slots-left feature saturates here."""
    work_clip_slots: float = Field(default=1.0, gt=0)
    """Remaining-data feature saturates at this many slots of work at C_r."""
    count_clip: int = Field(default=128, ge=1)
    """Flow-count feature saturates here."""

    @property
    def size(self) -> int:
        return 2 * self.max_flows + 1


class DqnEnvSettings(_Frozen):
    """The public-network model; defaults are our reading of the paper (its Table 2
    is not in the text we have): see docs/decisions.md."""

    capacity_bps: float = Field(default=100e6, gt=0)
    """C_r, what the allocation shares each slot."""
    slot_s: float = Field(default=1.0, gt=0)
    """A time slot (the shim's allocation period)."""
    episode_slots: int = Field(default=200, ge=1)
    """The observation time: the paper's 200 s."""
    slim: FlowClass = FlowClass(size_bytes=1_000_000, size_jitter=0.5, deadline_slots=(2, 3),
                                reward=10.0)
    """Consensus traffic: 8% of a slot's capacity on average, due within 2-3 slots (a
    round of 32 is then more than 2 slots can carry)."""
    fat: FlowClass = FlowClass(size_bytes=250_000_000, size_jitter=0.2, deadline_slots=(50, 50),
                               reward=5.0)
    """Background bulk: 20 slots of capacity due in 50, so two of them want 0.8 C_r."""
    schedule: Annotated[PaperSchedule | ExplicitSchedule, Field(discriminator="kind")] = \
        PaperSchedule()
    observation: ObservationSettings = ObservationSettings()
    rtt_s: float = Field(default=0.04, gt=0)
    """Round trip of the TCP-like senders; `step_senders` sub-steps a slot by it."""
    buffer_s: float = Field(default=0.1, ge=0)
    """Bottleneck buffer, in seconds at C_r (the testbed's default queue is 100 ms)."""

    @model_validator(mode="after")
    def _slim_above_fat(self) -> DqnEnvSettings:
        if not self.slim.reward > self.fat.reward:
            raise ValueError(f"slim.reward ({self.slim.reward}) must exceed fat.reward "
                             f"({self.fat.reward}): the paper's reward rule (iv)")
        return self

    @property
    def slot_bytes(self) -> float:
        return self.capacity_bps * self.slot_s / 8


def slim_per_round(schedule: PaperSchedule, slot: int) -> int:
    """Slim flows in the consensus round at `slot` (0 if no round starts there)."""
    if slot < 1 or (slot - 1) % schedule.round_slots:
        return 0
    return schedule.group * stage_of(schedule, slot)


def stage_of(schedule: PaperSchedule, slot: int) -> int:
    """The stage (1-based) a slot is in."""
    return min(1 + slot // schedule.stage_slots, schedule.max_groups)


def encode(views: Sequence[FlowView], capacity_bps: float, period_s: float,
           obs: ObservationSettings) -> np.ndarray:
    """The state the DQN sees (module docstring); the same from the env and the shim."""
    out = np.zeros(obs.size, dtype=np.float32)
    slot_bytes = capacity_bps * period_s / 8
    for i, f in enumerate(sorted(views, key=edf_order)[:obs.max_flows]):
        left = f.slots_left
        out[2 * i] = 1.0 if left is None or left <= 0 else min(left / obs.horizon_slots, 1.0)
        if f.remaining_bytes is None or slot_bytes <= 0:
            out[2 * i + 1] = 1.0
        else:
            work = f.remaining_bytes / slot_bytes / obs.work_clip_slots
            out[2 * i + 1] = math.sqrt(min(max(work, 0.0), 1.0))
    out[-1] = min(len(views) / obs.count_clip, 1.0)
    return out


@dataclass(slots=True)
class SimFlow:
    """One flow of the model; `view()` is what allocators see of it."""

    id: int
    key: FlowKey
    slim: bool
    size_bytes: int
    deadline_slots: int
    reward: float
    arrival_slot: int
    remaining: float
    """Bytes not yet delivered across the bottleneck."""
    slots_left: int
    """1 = the current slot is its last."""
    queued: float = 0.0
    """Bytes sent but waiting in the bottleneck queue (TCP-like senders only)."""
    last_served: float = 0.0
    """Bytes delivered in the last slot."""

    @property
    def unsent(self) -> float:
        return max(self.remaining - self.queued, 0.0)

    def view(self) -> FlowView:
        return FlowView(self.key, math.ceil(self.remaining - 1e-9), self.slots_left,
                        int(self.last_served))


def flow_key(flow_id: int, slim: bool) -> FlowKey:
    """A made-up, unique 5-tuple for a model flow (the shim keys flows by 5-tuple)."""
    if not 0 <= flow_id < 1 << 24:
        raise ValueError(f"flow id {flow_id} out of range")
    src = f"10.{flow_id >> 16}.{(flow_id >> 8) & 255}.{flow_id & 255}"
    return FlowKey(src, 10000 + flow_id % 50000, "10.255.0.1", 5201 if slim else 5202)


class SenderModel(Protocol):
    """Senders that decide their own rates (the TCP-like baselines); driven in
    sub-steps of `dt` seconds by `BandwidthEnv.step_senders`."""

    name: str

    def offer(self, flows: Sequence[SimFlow], now: float, dt: float) -> np.ndarray:
        """Bytes each flow puts into the bottleneck in the next `dt` (clipped to its
        unsent bytes by the caller)."""
        ...

    def feedback(self, flows: Sequence[SimFlow], served: np.ndarray, dropped: np.ndarray,
                 now: float, dt: float) -> None:
        """What the bottleneck did with each flow's bytes in the sub-step ending at `now`."""
        ...


def fifo_bottleneck(queue: np.ndarray, arrivals: np.ndarray, serve_bytes: float,
                    buffer_bytes: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One sub-step of a drop-tail FIFO as a fluid: what was queued leaves first, then
    the new arrivals (each group shared in proportion to the flows' bytes); arrivals
    that do not fit in the buffer are dropped in proportion. Returns (served, queue
    after, dropped) per flow."""
    q_total = float(queue.sum())
    from_q = min(serve_bytes, q_total)
    served = queue * (from_q / q_total) if q_total > 0 else np.zeros_like(queue)
    a_total = float(arrivals.sum())
    from_a = min(serve_bytes - from_q, a_total)
    served_a = arrivals * (from_a / a_total) if a_total > 0 else np.zeros_like(arrivals)
    waiting_new = arrivals - served_a
    after = queue - served + waiting_new
    excess = float(after.sum()) - buffer_bytes
    dropped = np.zeros_like(arrivals)
    new_total = float(waiting_new.sum())
    if excess > 0 and new_total > 0:
        dropped = waiting_new * min(excess / new_total, 1.0)
        after = after - dropped
    return served + served_a, np.maximum(after, 0.0), dropped


@dataclass
class EpisodeTotals:
    reward: float = 0.0
    slim_finished: int = 0
    slim_missed: int = 0
    fat_finished: int = 0
    fat_missed: int = 0
    unfinished_at_end: int = 0
    served_bytes: float = 0.0
    dropped_bytes: float = 0.0
    arrived: dict[str, int] = field(default_factory=lambda: {"slim": 0, "fat": 0})


class BandwidthEnv(gym.Env[np.ndarray, np.int64]):
    """Fat and slim flows sharing C_r at a middlebox, one step per time slot."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, settings: DqnEnvSettings | None = None) -> None:
        self.settings = settings or DqnEnvSettings()
        obs = self.settings.observation
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(obs.size,), dtype=np.float32)
        self.templates = action_templates()
        self.action_space = gym.spaces.Discrete(len(self.templates))
        self.action_names = ACTION_NAMES
        self.flows: list[SimFlow] = []
        self.slot = 0
        self.totals = EpisodeTotals()
        self._next_id = 0
        self._pending: dict[int, list[tuple[bool, int, int]]] = {}
        self._fat_pool: list[tuple[bool, int, int]] = []

    # ---- episode set-up ------------------------------------------------------------
    def reset(self, *, seed: int | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.flows, self.slot, self._next_id = [], 0, 0
        self.totals = EpisodeTotals()
        self._pending, self._fat_pool = {}, []
        sched = self.settings.schedule
        if isinstance(sched, ExplicitSchedule):
            for a in sched.arrivals:
                self._pending.setdefault(a.slot, []).append(
                    (a.kind == "slim", a.size_bytes, a.deadline_slots))
        else:
            self._pending[0] = ([self._draw(True) for _ in range(sched.initial_slim)]
                                + [self._draw(False) for _ in range(sched.fat_flows)])
            for slot in range(1, self.settings.episode_slots):
                n = slim_per_round(sched, slot)
                if n:
                    self._pending.setdefault(slot, []).extend(self._draw(True) for _ in range(n))
            # replacements drawn up front, so every policy meets the same fat flows; a
            # flow lives at least one slot, so this many always suffice
            spare = sched.fat_flows * self.settings.episode_slots if sched.renew_fat else 0
            self._fat_pool = [self._draw(False) for _ in range(spare)][::-1]
        self._arrive(0)
        return self._obs(), self._info(0, {})

    def _draw(self, slim: bool) -> tuple[bool, int, int]:
        cls = self.settings.slim if slim else self.settings.fat
        lo, hi = 1 - cls.size_jitter, 1 + cls.size_jitter
        size = max(1, round(cls.size_bytes * float(self.np_random.uniform(lo, hi))))
        deadline = int(self.np_random.integers(cls.deadline_slots[0], cls.deadline_slots[1] + 1))
        return slim, size, deadline

    def _arrive(self, slot: int) -> None:
        for slim, size, deadline in self._pending.pop(slot, []):
            cls = self.settings.slim if slim else self.settings.fat
            fid = self._next_id
            self._next_id += 1
            self.flows.append(SimFlow(fid, flow_key(fid, slim), slim, size, deadline, cls.reward,
                                      slot, float(size), deadline))
            self.totals.arrived["slim" if slim else "fat"] += 1

    # ---- what allocators see -------------------------------------------------------
    def flow_views(self) -> list[FlowView]:
        return [f.view() for f in self.flows]

    def _obs(self) -> np.ndarray:
        s = self.settings
        return encode(self.flow_views(), s.capacity_bps, s.slot_s, s.observation)

    def _info(self, slot: int, extra: dict[str, Any]) -> dict[str, Any]:
        """`slot`: the slot the step served (or, after reset, the first)."""
        sched = self.settings.schedule
        stage, per_round = 1, 0
        if isinstance(sched, PaperSchedule):
            stage = stage_of(sched, slot)
            per_round = sched.group * stage
        return {"slot": slot, "n_flows": len(self.flows), "stage": stage,
                "slim_per_round": per_round, **extra}

    # ---- stepping ------------------------------------------------------------------
    def step(self, action: int | np.integer[Any]
             ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = int(action)
        if not 0 <= a < len(self.templates):
            raise ValueError(f"action {a} outside 0..{len(self.templates) - 1}")
        s = self.settings
        rates = self.templates[a].allocate(self.flow_views(), s.capacity_bps, s.slot_s)
        return self.step_rates(rates, {"action": a})

    def step_rates(self, rates: Mapping[FlowKey, float], extra: dict[str, Any] | None = None
                   ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Serve one slot at the given rates (bit/s per flow; flows not named get 0).
        The rates must sum to at most C_r: they are an allocation, not an offer."""
        s = self.settings
        known = {f.key: f for f in self.flows}
        unknown = [k for k in rates if k not in known]
        if unknown:
            raise KeyError(f"rates for flows not in the model: {unknown[:3]}")
        if any(not r >= 0 for r in rates.values()):
            raise ValueError("rates must be non-negative numbers")
        total = sum(rates.values())
        if total > s.capacity_bps * (1 + 1e-9) + 1e-6:
            raise ValueError(f"allocation sums to {total:.6g} bit/s > C_r = {s.capacity_bps:.6g}")
        if any(f.queued > 0 for f in self.flows):
            raise RuntimeError("step_rates after step_senders left a queue: one controller "
                               "per episode")
        served = 0.0
        for f in self.flows:
            give = min(rates.get(f.key, 0.0) * s.slot_s / 8, f.remaining)
            f.remaining -= give
            f.last_served = give
            served += give
        return self._close_slot(served, 0.0, {"allocated_bps": total, **(extra or {})})

    def step_senders(self, senders: SenderModel
                     ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Serve one slot with senders that choose their own rates, through the fluid
        drop-tail bottleneck (C_r per second, `buffer_s` of queue), in sub-steps of about
        `rtt_s`. Flows that finish mid-slot stop sending."""
        s = self.settings
        n = max(1, round(s.slot_s / s.rtt_s))
        dt = s.slot_s / n
        serve, buffer = s.capacity_bps * dt / 8, s.capacity_bps * s.buffer_s / 8
        for f in self.flows:
            f.last_served = 0.0
        served_total = dropped_total = 0.0
        for k in range(n):
            now = self.slot * s.slot_s + k * dt
            live = [f for f in self.flows if f.remaining >= _DONE_BYTES]
            if not live:
                break
            unsent = np.array([f.unsent for f in live])
            offers = np.clip(np.asarray(senders.offer(live, now, dt), dtype=float), 0.0, unsent)
            queue = np.array([f.queued for f in live])
            served, after, dropped = fifo_bottleneck(queue, offers, serve, buffer)
            for f, sv, q in zip(live, served, after, strict=True):
                f.remaining = max(f.remaining - float(sv), 0.0)
                f.queued = min(float(q), f.remaining)
                f.last_served += float(sv)
            served_total += float(served.sum())
            dropped_total += float(dropped.sum())
            senders.feedback(live, served, dropped, now + dt, dt)
        return self._close_slot(served_total, dropped_total, {})

    def _close_slot(self, served: float, dropped: float, extra: dict[str, Any]
                    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        s, t = self.settings, self.totals
        reward = 0.0
        counts = {"slim_finished": 0, "slim_missed": 0, "fat_finished": 0, "fat_missed": 0}
        kept: list[SimFlow] = []
        renew = 0
        for f in self.flows:
            cls = "slim" if f.slim else "fat"
            if f.remaining < _DONE_BYTES:
                reward += f.reward
                counts[f"{cls}_finished"] += 1
            else:
                f.slots_left -= 1
                if f.slots_left > 0:
                    kept.append(f)
                    continue
                reward -= f.reward
                counts[f"{cls}_missed"] += 1
            if not f.slim:
                renew += 1
        self.flows = kept
        t.reward += reward
        t.served_bytes += served
        t.dropped_bytes += dropped
        for k, v in counts.items():
            setattr(t, k, getattr(t, k) + v)
        self.slot += 1
        truncated = self.slot >= s.episode_slots
        sched = s.schedule
        if renew and isinstance(sched, PaperSchedule) and sched.renew_fat and not truncated:
            self._pending.setdefault(self.slot, []).extend(
                self._fat_pool.pop() for _ in range(renew))
        if truncated:
            t.unfinished_at_end = len(self.flows)
        else:
            self._arrive(self.slot)
        info = self._info(self.slot - 1, {"reward": reward, "served_bytes": served,
                                          "dropped_bytes": dropped, **counts, **extra})
        return self._obs(), reward, False, truncated, info


def play(env: BandwidthEnv, seed: int, *, allocator: Allocator | None = None,
         senders: SenderModel | None = None,
         on_slot: Callable[[dict[str, Any]], None] | None = None) -> EpisodeTotals:
    """One whole episode from `reset(seed=seed)` with an allocator (rates from the flow
    views, as the shim would set them) or with senders that pick their own rates;
    `on_slot` gets every step's info."""
    if (allocator is None) == (senders is None):
        raise ValueError("give exactly one of allocator or senders")
    env.reset(seed=seed)
    s = env.settings
    while True:
        if allocator is not None:
            rates = allocator.allocate(env.flow_views(), s.capacity_bps, s.slot_s)
            _, _, _, truncated, info = env.step_rates(rates)
        else:
            assert senders is not None
            _, _, _, truncated, info = env.step_senders(senders)
        if on_slot is not None:
            on_slot(info)
        if truncated:
            return env.totals
