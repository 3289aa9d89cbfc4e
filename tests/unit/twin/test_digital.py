"""The digital twin kept apart from the physical chain (twin.digital, issue 19): it
calibrates from sensor feeds alone, sees a node go down, carries the backlog into its
model, and policies, what-if and prediction never touch the physical model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import twin.experiment as experiment
from twin.agentplus import AgentPlus, AgentPlusSettings
from twin.agents import QAgent
from twin.digital import DigitalTwin, PhysicalChain, SensorFeed, TwinSettings, make_feed
from twin.env import ChainTwinEnv, EnvSettings, step_latency
from twin.experiment import (
    DecisionContext,
    agent_plus_policy,
    fixed,
    q_policy,
    run_episode,
    train,
    whatif_policy,
)
from twin.model import ChainModel, ModelConfig, ProtocolSwitch
from twin.scenarios import Interval, Outage, Scenario, load_workload
from twin.whatif import WhatIfOptimiser

SPEEDS = (4.0, 6.0, 8.0, 10.0, 12.0)
LATENCY = (10.0, 20.0, 30.0, 40.0, 50.0)
CFG = ModelConfig(records="all")


def steady(outages: tuple[Outage, ...] = (), duration: float = 60.0,
           tps: float = 120.0) -> Scenario:
    return Scenario("steady", 3, 5, duration, LATENCY,
                    (Interval(0, duration, tps, 800, SPEEDS),), outages)


def physical(sc: Scenario, protocol: str = "pbft") -> tuple[ChainModel, PhysicalChain]:
    m = ChainModel(sc, CFG, protocol)
    return m, PhysicalChain(m)


def test_twin_recovers_known_parameters_from_feeds_alone():
    m, chain = physical(steady())
    dt = DigitalTwin(5, CFG)
    for t in (10.0, 20.0, 30.0):
        m.run_until(t)
        dt.ingest(chain.feed())
    obs, truth = dt.observation(), m.observe()
    assert obs.up == truth.up == (True,) * 5
    assert obs.link_mbps == pytest.approx(SPEEDS, rel=0.01)
    assert obs.latency_ms == pytest.approx(LATENCY, abs=0.5)
    assert obs.tps == pytest.approx(120.0, rel=0.1)  # Poisson over a 10 s window
    assert obs.tx_size == pytest.approx(800.0)
    assert (obs.height, obs.pending_txs, obs.now) == (truth.height, truth.pending_txs, 30.0)


def test_twin_starts_from_the_generators_midpoints():
    gen = load_workload("wl1").generator
    obs = DigitalTwin(5, CFG, TwinSettings(generator=gen)).observation()
    assert obs.link_mbps == (10.5,) * 5 and obs.tps == 125.0 and obs.height == 0
    assert obs.up == (True,) * 5  # no evidence of anyone being down


def test_a_node_is_down_after_its_silence_and_up_again_after_it_speaks():
    """Node 2 crashes at 20 s (for 20 s); a feed every second. The twin says it is
    down from the first feed after the second height committed without it (here late:
    the second is node 2's turn to propose, which takes a round change), and up again
    once its records come (it syncs after restarting)."""
    m, chain = physical(steady((Outage(2, 20.0, 40.0),)))
    dt = DigitalTwin(5, CFG)
    seen: dict[int, tuple[bool, ...]] = {}
    for k in range(1, 61):
        m.run_until(float(k))
        dt.ingest(chain.feed())
        seen[k] = dt.up
    second = sorted(t for t in m.commit_times if t > 20.0)[1]
    down = [k for k in seen if not seen[k][2]]
    assert min(down) == int(np.ceil(second)) and max(down) < 45
    assert all(seen[k][2] for k in seen if k < min(down) or k > max(down))
    assert all(all(seen[k][i] for i in (0, 1, 3, 4)) for k in seen)  # no false alarms


def test_model_now_carries_the_backlog_with_its_true_arrival_times():
    for present in ("replay", "fresh"):
        m, chain = physical(steady(tps=300.0))
        dt = DigitalTwin(5, CFG, TwinSettings(present=present))
        for t in (10.0, 20.0, 27.3):
            m.run_until(t)
            dt.ingest(chain.feed())
        twin = dt.model_now()
        assert twin.now == m.now == 27.3
        assert twin is not m and twin.stream is not m.stream
        n, age = twin.pending_age(27.3)
        n_true, age_true = m.pending_age(27.3)
        if present == "fresh":  # exactly what the records leave uncommitted
            assert (n, age) == (n_true, pytest.approx(age_true))
        else:  # the replay may commit the tip's successor before now
            assert abs(n - n_true) <= 300 * 2
        assert len(twin.chain) >= dt.height == len(m.chain)
        assert all(node.up for node in twin.nodes)


def test_model_now_restarts_a_down_node_behind_the_tip():
    m, chain = physical(steady((Outage(1, 10.0, 60.0),)))
    dt = DigitalTwin(5, CFG)
    for t in (10.0, 20.0, 30.0):
        m.run_until(t)
        dt.ingest(chain.feed())
    twin = dt.model_now()
    assert [n.up for n in twin.nodes] == [True, False, True, True, True]
    assert twin.nodes[1].tip_height < twin.nodes[0].tip_height
    # a what-if future where it recovers: it catches up from the twin's stand-in chain
    sc = Scenario("back", 1, 5, 60.0, LATENCY, (Interval(30.0, 60.0, 120.0, 800, SPEEDS),))
    twin.replace_future(sc, twin.stream)
    twin.run_until(45.0)
    assert twin.nodes[1].up and twin.nodes[1].tip_height >= dt.height
    assert not twin.violations


def test_prediction_matches_the_measured_step_in_a_steady_world():
    for protocol in ("pbft", "bigfoot"):
        m, chain = physical(steady(duration=80.0), protocol)
        dt = DigitalTwin(5, CFG, TwinSettings(new_failures=False))
        for t in (10.0, 20.0, 30.0):
            m.run_until(t)
            dt.ingest(chain.feed())
        predicted = dt.predict(protocol, 10.0, np.random.default_rng(0), scenarios=2)
        m.apply(ProtocolSwitch(protocol))
        m.run_until(40.0)
        measured = step_latency(m, 30.0, 40.0)[2]
        assert predicted == pytest.approx(measured, rel=0.1)


def test_the_feed_is_plain_data_and_the_twin_takes_nothing_else():
    m, chain = physical(steady())
    m.run_until(5.0)
    feed = chain.feed()
    assert {f.name for f in dataclasses.fields(SensorFeed)} == {
        "now", "records", "tx_times", "tx_sizes"}
    assert type(feed.now) is float and type(feed.records) is tuple
    assert not feed.tx_times.flags.writeable and not feed.tx_sizes.flags.writeable
    assert not np.shares_memory(feed.tx_times, m.stream.times)
    dt = DigitalTwin(5, CFG)
    with pytest.raises(TypeError):
        dt.ingest(m)  # type: ignore[arg-type]
    dt.ingest(feed)
    with pytest.raises(ValueError):
        dt.ingest(make_feed(1.0, (), np.zeros(0), np.zeros(0)))  # from the past
    # DecisionContext, all a policy gets, holds the twin and no physical model or env
    assert {f.name for f in dataclasses.fields(DecisionContext)} == {
        "twin", "encoder", "protocols"}


class Breach(AssertionError):
    """The twin's side touched the physical model."""


def guard(monkeypatch: pytest.MonkeyPatch) -> list[ChainModel]:
    """Seal the physical model of run_episode while the twin's side runs (the policy,
    and every DigitalTwin method): any attribute access on it then raises `Breach`.
    Returns the list that will hold the physical model (for a cheating policy)."""
    state = {"sealed": False}
    physical_models: list[ChainModel] = []

    class Sealed(ChainModel):
        def __getattribute__(self, name: str):  # type: ignore[no-untyped-def]
            if state["sealed"]:
                raise Breach(f"the twin's side read physical model.{name}")
            return super().__getattribute__(name)

    class Env(ChainTwinEnv):
        def reset(self, **kw):  # type: ignore[no-untyped-def]
            out = super().reset(**kw)
            assert self.model is not None
            self.model.__class__ = Sealed
            physical_models.append(self.model)
            return out

    def sealed(fn):  # type: ignore[no-untyped-def]
        def run(*a, **kw):  # type: ignore[no-untyped-def]
            was = state["sealed"]
            state["sealed"] = True
            try:
                return fn(*a, **kw)
            finally:
                state["sealed"] = was
        return run

    monkeypatch.setattr(experiment, "ChainTwinEnv", Env)
    for name in ("ingest", "observation", "model_now", "predict", "note_command"):
        monkeypatch.setattr(DigitalTwin, name, sealed(getattr(DigitalTwin, name)))
    real_run = experiment.run_episode

    def run_episode_sealed(sc, settings, policy, *a, **kw):  # type: ignore[no-untyped-def]
        return real_run(sc, settings, sealed(policy), *a, **kw)

    monkeypatch.setattr(experiment, "run_episode", run_episode_sealed)
    return physical_models


def test_policies_whatif_and_prediction_never_touch_the_physical_model(monkeypatch):
    """The boundary: every decision path runs with the physical model sealed. Passing
    the physical model to what-if (as before issue 19) breaks the seal."""
    physical_models = guard(monkeypatch)
    sc = load_workload("wl1").scenario(1)
    settings = EnvSettings(step_seconds=20.0)
    gen = load_workload("wl1").generator
    opt = WhatIfOptimiser(gen, 20.0, seed=1)
    plus = AgentPlus(QAgent(2, seed=1), WhatIfOptimiser(gen, 20.0, seed=1),
                     AgentPlusSettings(min_evidence=1))
    for policy, learner in ((whatif_policy(opt), None), (agent_plus_policy(plus), plus),
                            (q_policy(QAgent(2, seed=1), 0.5), None)):
        res = experiment.run_episode(sc, settings, policy, learner, predict=True)
        assert len(res.steps) == 15 and all(st.predicted is not None for st in res.steps)
    assert opt.calls == 15 and plus.whatif_decisions > 0

    def cheat(ctx, key):  # type: ignore[no-untyped-def]
        return opt.act(physical_models[-1])  # what-if on the physical model

    with pytest.raises(Breach):
        experiment.run_episode(sc, settings, cheat)


def test_episode_records_truth_and_estimate_per_step():
    sc = steady((Outage(4, 25.0, 60.0),))
    res = run_episode(sc, EnvSettings(), fixed(1), predict=True)
    assert [st.time for st in res.steps] == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    assert [st.all_up for st in res.steps] == [True, True, True, False, False, False]
    assert all(st.protocol == "bigfoot" and st.predicted is not None for st in res.steps)
    assert res.steps[3].estimate.up == res.steps[3].truth.up
    plain = run_episode(sc, EnvSettings(), fixed(1))
    assert plain.latency == res.latency and plain.actions == res.actions
    assert all(st.predicted is None for st in plain.steps) and plain.predict_seconds == 0
    env = ChainTwinEnv(sc, EnvSettings())  # the same chain without records or twin
    env.reset(seed=sc.seed)
    rewards, done = [], False
    while not done:
        _, r, done, _, _ = env.step(1)
        rewards.append(-r)
    assert env.model is not None
    assert res.latency == env.episode_latency()  # records on change nothing
    assert [st.latency for st in res.steps] == rewards
    assert res.uncommitted == env.model.pending_age(env.model.now)[0] > 0


def test_train_explores_with_the_epsilon_of_the_given_episode():
    agent = QAgent(2, seed=0)
    seen: list[float] = []
    real = experiment.q_policy

    def spy(a, eps=0.0):  # type: ignore[no-untyped-def]
        seen.append(eps)
        return real(a, eps)

    mp = pytest.MonkeyPatch()
    mp.setattr(experiment, "q_policy", spy)
    try:
        train(agent, steady(duration=20.0), EnvSettings(), 2, epsilon_episode=7)
    finally:
        mp.undo()
    assert seen == [agent.epsilon(7), agent.epsilon(8)]
