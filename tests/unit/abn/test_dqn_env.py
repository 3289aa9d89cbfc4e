"""The ABN paper's public-network model (abn/dqn_env.py), its allocators
(abn/dqn_baselines.py) and the TCP-like senders (abn/tcp_models.py)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from pydantic import ValidationError

from abn.allocators import Allocator, AverageAllocator
from abn.dqn_baselines import (
    ACTION_NAMES,
    EdfAdmitAllocator,
    EdfAllocator,
    SrptAllocator,
    admitted,
)
from abn.dqn_env import (
    BandwidthEnv,
    DqnEnvSettings,
    FlowClass,
    ObservationSettings,
    PaperSchedule,
    SimFlow,
    encode,
    fifo_bottleneck,
    play,
    slim_per_round,
)
from abn.flows import FlowKey, FlowView
from abn.tcp_models import BbrLike, CubicLike

MB = 1_000_000
C = 8e6  # one MB per 1 s slot


def toy(arrivals: list[tuple[int, str, int, int]], slots: int, buffer_s: float = 0.1
        ) -> DqnEnvSettings:
    """A fixed schedule at 1 MB per slot; slim flows are worth 10, fat ones 1."""
    return DqnEnvSettings.model_validate({
        "capacity_bps": C, "slot_s": 1.0, "episode_slots": slots, "buffer_s": buffer_s,
        "slim": {"size_bytes": MB, "deadline_slots": (1, 1), "reward": 10.0},
        "fat": {"size_bytes": MB, "deadline_slots": (1, 1), "reward": 1.0},
        "schedule": {"kind": "explicit", "arrivals": [
            {"slot": s, "kind": k, "size_bytes": b, "deadline_slots": d}
            for s, k, b, d in arrivals]},
        "observation": {"max_flows": 4, "horizon_slots": 4, "work_clip_slots": 4.0}})


# Two flows, and only one allocation finishes both: the fat one (2 MB, due in 2 slots)
# must get the whole link in slots 0 and 1, the slim one (1 MB, due in 3) slot 2.
TWO_FLOWS = toy([(0, "slim", MB, 3), (0, "fat", 2 * MB, 2)], slots=3)
TWO_FLOWS_OPTIMUM = 11.0


def episode(settings: DqnEnvSettings, allocator: Allocator, seed: int = 0) -> float:
    return play(BandwidthEnv(settings), seed, allocator=allocator).reward


def test_passes_gymnasiums_checker() -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*render.*")
        check_env(BandwidthEnv())
        check_env(BandwidthEnv(TWO_FLOWS))


def test_the_only_allocation_that_finishes_both_flows_earns_the_optimum() -> None:
    env = BandwidthEnv(TWO_FLOWS)
    env.reset(seed=0)
    slim, fat = (f.key for f in env.flows)
    total = sum(env.step_rates(r)[1] for r in ({fat: C}, {fat: C}, {slim: C}))
    assert total == TWO_FLOWS_OPTIMUM == 10 + 1
    assert env.totals.slim_finished == env.totals.fat_finished == 1
    env.reset(seed=0)  # any other split of slot 0 leaves the fat flow short
    assert sum(env.step_rates(r)[1] for r in ({fat: 0.9 * C, slim: 0.1 * C}, {fat: C},
                                              {slim: C})) < TWO_FLOWS_OPTIMUM
    assert episode(TWO_FLOWS, EdfAllocator()) == TWO_FLOWS_OPTIMUM
    assert episode(TWO_FLOWS, EdfAdmitAllocator()) == TWO_FLOWS_OPTIMUM
    assert episode(TWO_FLOWS, SrptAllocator()) == 10 - 1  # the slim first: the fat misses
    assert episode(TWO_FLOWS, AverageAllocator()) == 10 - 1


def test_edf_admit_gives_up_a_flow_that_cannot_finish_and_edf_does_not() -> None:
    # a fat flow that needs 1.5 slots in 1, and two slim flows that just fit in 2 slots
    s = toy([(0, "fat", 3 * MB // 2, 1), (0, "slim", MB, 2), (0, "slim", MB, 2)], slots=2)
    assert episode(s, EdfAdmitAllocator()) == 10 + 10 - 1
    assert episode(s, EdfAllocator()) == 10 - 10 - 1  # serves the hopeless fat flow first
    env = BandwidthEnv(s)
    env.reset(seed=0)
    assert {f.remaining_bytes for f in admitted(env.flow_views(), C, 1.0)} == {MB}


def test_reward_rules() -> None:
    s = toy([(0, "slim", MB, 1), (0, "fat", MB, 1), (0, "slim", MB, 3)], slots=2)
    env = BandwidthEnv(s)
    env.reset(seed=0)
    slim_now, fat_now, slim_later = (f.key for f in env.flows)
    _, r, _, truncated, info = env.step_rates({slim_now: C})
    # finished in time: +10; timed out with data left: -1 (its reward, negated); else 0
    assert r == 10 - 1 and not truncated
    assert (info["slim_finished"], info["fat_missed"], info["slim_missed"]) == (1, 1, 0)
    assert [f.key for f in env.flows] == [slim_later]  # both left; the other flow waits
    assert env.flows[0].slots_left == 2
    _, r, _, truncated, _ = env.step_rates({slim_later: C})
    assert r == 10 and truncated
    env.reset(seed=0)
    _, r, *_ = env.step_rates({slim_now: C / 2, fat_now: C / 2})
    assert r == -10 - 1  # half a slot each: both time out
    env.reset(seed=0)
    _, r, *_ = env.step_rates({fat_now: C})
    assert r == 1 - 10  # slim punishment outweighs the fat reward (rule iv)
    with pytest.raises(ValidationError, match="must exceed"):
        DqnEnvSettings(slim=FlowClass(size_bytes=1, deadline_slots=(1, 1), reward=1.0),
                       fat=FlowClass(size_bytes=9, deadline_slots=(1, 1), reward=2.0))


def test_an_allocation_over_capacity_is_refused() -> None:
    env = BandwidthEnv(TWO_FLOWS)
    env.reset(seed=0)
    slim, fat = (f.key for f in env.flows)
    with pytest.raises(ValueError, match="C_r"):
        env.step_rates({slim: C, fat: 1.0})
    with pytest.raises(KeyError):
        env.step_rates({FlowKey("1.2.3.4", 1, "5.6.7.8", 2): 1.0})


def test_the_papers_schedule_adds_slim_flows_in_multiples_of_four() -> None:
    s = DqnEnvSettings()
    sched = s.schedule
    assert isinstance(sched, PaperSchedule) and sched.group == 4
    env = BandwidthEnv(s)
    env.reset(seed=3)
    assert sorted(f.slim for f in env.flows) == [False, False, True]  # 2 fat + 1 slim
    seen: dict[int, int] = {}
    edf = EdfAllocator()
    for _ in range(s.episode_slots - 1):
        env.step_rates(edf.allocate(env.flow_views(), s.capacity_bps, s.slot_s))
        new = [f for f in env.flows if f.arrival_slot == env.slot]
        seen[env.slot] = sum(f.slim for f in new)
        assert sum(not f.slim for f in env.flows) == 2  # the background is renewed
    batches = {k: v for k, v in seen.items() if v}
    assert set(batches) == set(range(1, s.episode_slots, 2))  # a round every 2 slots
    assert all(v % 4 == 0 for v in batches.values())
    assert [batches[k] for k in (1, 25, 51, 75, 101, 125, 151, 175, 199)] == \
        [4, 8, 12, 16, 20, 24, 28, 32, 32]
    assert max(batches.values()) == 32 == slim_per_round(sched, 199)


def test_episodes_are_a_function_of_the_seed() -> None:
    def run(seed: int) -> list[float]:
        env = BandwidthEnv()
        obs, _ = env.reset(seed=seed)
        out = [float(obs.sum())]
        for t in range(40):
            obs, r, *_ = env.step(t % 4)
            out += [float(obs.sum()), r]
        return out

    assert run(7) == run(7)
    assert run(7) != run(8)


def test_state_encoding() -> None:
    obs = ObservationSettings(max_flows=3, horizon_slots=4, work_clip_slots=1.0)
    k = [FlowKey(f"10.0.0.{i}", i, "10.0.1.1", 1) for i in range(4)]
    views = [FlowView(k[0], 250_000, 2, 0), FlowView(k[1], None, None, 0),
             FlowView(k[2], 4 * MB, 1, 0), FlowView(k[3], MB // 4, 0, 0)]
    x = encode(views, C, 1.0, obs)
    assert x.dtype == np.float32 and x.shape == (7,)
    # EDF order: 1 slot left, then 2; missed and no deadline count as far (last)
    assert x[:4] == pytest.approx([0.25, 1.0, 0.5, 0.5])  # sqrt(4 MB clipped), sqrt(0.25)
    assert x[4:6] == pytest.approx([1.0, 0.5])  # the missed one (key 3) before key 1
    assert x[6] == pytest.approx(4 / 128)
    assert not encode([], C, 1.0, obs).any()


def test_every_template_allocates_within_capacity() -> None:
    env = BandwidthEnv()
    env.reset(seed=1)
    for t in range(60):
        _, _, _, _, info = env.step(t % len(ACTION_NAMES))
        assert info["allocated_bps"] <= env.settings.capacity_bps * (1 + 1e-9)


def test_fifo_bottleneck_conserves_bytes() -> None:
    q = np.array([100.0, 0.0])
    a = np.array([300.0, 600.0])
    served, after, dropped = fifo_bottleneck(q, a, serve_bytes=500, buffer_bytes=200)
    assert served.sum() == pytest.approx(500)
    assert served[0] >= 100  # the queue leaves first
    assert after.sum() == pytest.approx(200)  # full buffer
    assert (served + after + dropped).sum() == pytest.approx(q.sum() + a.sum())
    assert dropped[1] == pytest.approx(2 * dropped[0])  # in proportion to arrivals


@pytest.mark.slow
def test_tcp_like_senders_ignore_deadlines_and_lose_slim_flows_as_they_grow() -> None:
    """Cubic-like: over-subscription -> losses -> backoff (the link idles while windows
    regrow). BBR-like: fills link and buffer. Neither is deadline-aware, so both lose
    slim flows in the late stages where EDF-admit loses few."""
    s = DqnEnvSettings()
    res = {}
    for name in ("cubic", "bbr", "edf_admit"):
        env = BandwidthEnv(s)
        late = [0]

        def on(info: dict[str, Any], late: list[int] = late) -> None:
            if info["stage"] >= 7:
                late[0] += info["slim_missed"]

        if name == "edf_admit":
            t = play(env, 5, on_slot=on, allocator=EdfAdmitAllocator())
        else:
            t = play(env, 5, on_slot=on, senders=CubicLike(s.rtt_s, 5) if name == "cubic"
                     else BbrLike(s.rtt_s, s.capacity_bps, 5))
        res[name] = (t, late[0])
    cubic, bbr, admit = (res[k][0] for k in ("cubic", "bbr", "edf_admit"))
    assert cubic.dropped_bytes > 0 and bbr.dropped_bytes > 0 and admit.dropped_bytes == 0
    util = {k: v[0].served_bytes / (s.slot_bytes * s.episode_slots) for k, v in res.items()}
    assert util["cubic"] < util["bbr"] <= 1.0 + 1e-9
    assert util["edf_admit"] == pytest.approx(1.0, abs=1e-6)
    assert res["cubic"][1] > 3 * res["edf_admit"][1] and res["bbr"][1] > 3 * res["edf_admit"][1]


def test_cubic_like_backs_off_on_loss() -> None:
    s = toy([(0, "fat", 1000 * MB, 10), (0, "fat", 1000 * MB, 10)], slots=3, buffer_s=0.05)
    env = BandwidthEnv(s)
    env.reset(seed=0)
    cubic = CubicLike(s.rtt_s, 0)
    cwnds: list[float] = []
    feedback = cubic.feedback

    def spy(flows: Sequence[SimFlow], served: np.ndarray, dropped: np.ndarray, now: float,
            dt: float) -> None:
        feedback(flows, served, dropped, now, dt)
        cwnds.append(cubic._flows[flows[0].key].cwnd)

    cubic.feedback = spy  # type: ignore[method-assign]
    for _ in range(3):
        env.step_senders(cubic)
    drops = [i for i in range(1, len(cwnds)) if cwnds[i] < cwnds[i - 1]]
    assert drops, "the windows never came down"
    i = drops[0]
    assert cwnds[i] == pytest.approx(cwnds[i - 1] * 0.7, rel=0.01)
    assert env.totals.dropped_bytes > 0
