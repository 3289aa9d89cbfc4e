"""Environment, agents, what-if, calibration and job wiring."""

from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from testbed.config import load_experiment
from testbed.jobs import JobContext
from twin.agentplus import AgentPlus, AgentPlusSettings
from twin.agents import QAgent, QSettings
from twin.calibration import calibrate, estimate
from twin.encoders import PaperStateEncoder
from twin.env import ChainTwinEnv, EnvSettings
from twin.model import ChainModel, ModelConfig
from twin.scenarios import Interval, Outage, Scenario, generate, load_workload
from twin.whatif import WhatIfOptimiser

ROOT = Path(__file__).resolve().parents[3]


def test_check_env_passes():
    env = ChainTwinEnv(load_workload("wl1"), EnvSettings(step_seconds=20.0))
    check_env(env, skip_render_check=True)


def test_paper_state():
    env = ChainTwinEnv(Scenario("s", 1, 3, 30.0, (10, 10, 10),
                                (Interval(0, 30, 20, 300, (2.4, 7.6, 19.5)),),
                                (Outage(1, 0.0, 30.0),)))
    obs, info = env.reset(seed=0)
    assert tuple(obs) == (1, 2, 20) == info["key"]
    assert PaperStateEncoder().space.contains(obs)


def test_q_agent_learns_toy_best_action():
    agent = QAgent(2, QSettings(epsilon_decay_episodes=20), seed=0)
    rng = np.random.default_rng(0)
    for ep in range(60):
        for s in (0, 1):
            a = agent.act((s,), agent.epsilon(ep))
            reward = -1.0 if a == s else -2.0 + rng.normal(0, 0.1)
            agent.train_step((s,), a, reward, (s,), True)
    assert agent.act((0,)) == 0 and agent.act((1,)) == 1


def test_q_agent_save_load(tmp_path):
    agent = QAgent(2, seed=1)
    agent.train_step((1, 2, 3), 1, -2.0, (1, 2, 3), True)
    agent.save(tmp_path / "q.json")
    back = QAgent.load(tmp_path / "q.json")
    assert np.allclose(back.q[(1, 2, 3)], agent.q[(1, 2, 3)])


def test_whatif_prefers_pbft_with_a_node_down_and_agent_plus_learns_it():
    sc = Scenario("down", 5, 5, 60.0, (10,) * 5, (Interval(0, 60, 100, 500, (20.0,) * 5),),
                  (Outage(4, 0.0, 60.0),))
    model = ChainModel(sc, ModelConfig(), "bigfoot")
    model.run_until(10.0)
    wl = load_workload("wl1")
    opt = WhatIfOptimiser(wl.generator, 10.0, seed=0)
    lat = opt.evaluate(model)
    assert lat[0] < lat[1]  # pbft, bigfoot
    plus = AgentPlus(QAgent(2, seed=0), WhatIfOptimiser(wl.generator, 10.0, seed=0),
                     AgentPlusSettings(min_evidence=1))
    key = (1, 20, 20)
    assert plus.act(key, model) == 0 and plus.whatif_decisions == 1
    assert plus.act(key, model) == 0 and plus.agent_decisions == 1


class _FixedWhatIf:
    """Stands in for the what-if optimiser: always the same simulated latencies."""

    def __init__(self, latencies):
        self.latencies = np.asarray(latencies, dtype=float)
        self.calls = 0

    def evaluate(self, model):
        self.calls += 1
        return self.latencies.copy()


def test_agent_plus_asks_until_sure_then_decides_alone():
    wi = _FixedWhatIf([5.0, 3.0])
    plus = AgentPlus(QAgent(2, seed=0), wi, AgentPlusSettings(unsure="significance",
                                                              min_sims=2, max_sims=3))
    key = (0, 10, 20)
    assert [plus.act(key, None) for _ in range(4)] == [1, 1, 1, 1]
    # two identical paired samples: advantage 2 s with zero spread, so no third call
    assert wi.calls == 2 and plus.agent_decisions == 2
    plus.act((1, 10, 20), None)  # a new state (F flipped) is unseen: ask again
    assert wi.calls == 3


def test_agent_plus_budget_caps_whatif_calls():
    wi = _FixedWhatIf([5.0, 3.0])
    plus = AgentPlus(QAgent(2, seed=0), wi, AgentPlusSettings(budget_burst=1,
                                                              budget_share=0.25))
    for i in range(20):
        plus.act((0, i, i), None)  # every state unseen
    assert wi.calls <= 1 + 0.25 * 20 and plus.whatif_decisions == wi.calls


def test_agent_plus_asks_in_unseen_states_until_they_have_evidence():
    """The paper's rule: what-if while some protocol has too few updates in the state;
    its simulated outcomes are that evidence, so the state is then the agent's."""
    wi = _FixedWhatIf([5.0, 3.0])
    plus = AgentPlus(QAgent(2, seed=0), wi, AgentPlusSettings(min_evidence=2))
    key = (0, 10, 20)
    assert [plus.act(key, None) for _ in range(4)] == [1, 1, 1, 1]
    assert wi.calls == 2 and plus.agent_decisions == 2
    trained = QAgent(2, seed=0)
    for _ in range(2):
        for a in (0, 1):
            trained.update(key, a, -1.0)  # offline training already saw this state
    plus = AgentPlus(trained, wi, AgentPlusSettings(min_evidence=2))
    plus.act(key, lambda: pytest.fail("what-if consulted in a state with evidence"))
    assert wi.calls == 2 and plus.agent_decisions == 1
    plus.act((1, 10, 20), lambda: None)  # unseen: builds the twin's model, asks what-if
    assert wi.calls == 3


class _AlternatingWhatIf(_FixedWhatIf):
    """Simulations that disagree: the best protocol flips from call to call."""

    def evaluate(self, model):
        self.calls += 1
        return self.latencies.copy() if self.calls % 2 else self.latencies[::-1].copy()


def test_agent_plus_offline_training_simulates_every_decision_and_fills_the_table():
    """Offline what-if decisions train every protocol in the state and its evidence, and
    are not counted as deployment decisions; deployment then decides from the table."""
    wi = _FixedWhatIf([5.0, 3.0])
    plus = AgentPlus(QAgent(2, seed=0), wi, AgentPlusSettings(offline_epsilon=0.0))
    rng = np.random.default_rng(0)
    key = (0, 10, 20)
    assert [plus.act_offline(key, None, rng) for _ in range(3)] == [1, 1, 1]
    assert wi.calls == 3 and (plus.agent.tries[key] == 3).all()
    assert plus.whatif_decisions == plus.agent_decisions == 0 and len(plus.evidence[key]) == 3
    assert plus.act(key, lambda: pytest.fail("what-if consulted in a trained state")) == 1
    explore = AgentPlus(QAgent(2, seed=0), wi, AgentPlusSettings(offline_epsilon=1.0))
    assert {explore.act_offline(key, None, rng) for _ in range(40)} == {0, 1}


def test_agent_plus_consistency_asks_while_simulations_disagree_and_memory_is_bounded():
    key = (0, 10, 20)
    mixed = _AlternatingWhatIf([5.0, 3.0])
    plus = AgentPlus(QAgent(2, seed=0), mixed, AgentPlusSettings(
        unsure="consistency", min_sims=2, agree=0.8, max_samples=5))
    for _ in range(12):
        plus.act(key, None)
    assert mixed.calls == 12 and plus.agent_decisions == 0  # 50% agreement: never sure
    assert len(plus.evidence[key]) == 5  # the oldest simulations were dropped
    steady = _FixedWhatIf([5.0, 3.0])
    plus = AgentPlus(QAgent(2, seed=0), steady, AgentPlusSettings(
        unsure="consistency", min_sims=2, agree=0.8))
    assert [plus.act(key, None) for _ in range(5)] == [1] * 5
    assert steady.calls == 2 and plus.agent_decisions == 3


def test_agent_plus_counterfactual_keeps_the_simulated_gap():
    """A backlog that grows whatever the protocol must not make the agent flip-flop."""
    wi = _FixedWhatIf([5.0, 3.0])  # bigfoot 2 s better, per the twin
    key = (0, 10, 20)
    picks = {}
    for cf in (False, True):
        plus = AgentPlus(QAgent(2, seed=0), wi, AgentPlusSettings(
            unsure="significance", min_sims=1, max_sims=1, augment_updates=1,
            counterfactual=cf))
        seq = []
        for step in range(12):
            a = plus.act(key, None)
            seq.append(a)
            real = 10.0 + 3.0 * step - (2.0 if a == 1 else 0.0)  # backlog grows
            plus.train_step(key, a, -real, key, False)
        picks[cf] = seq
        if cf:
            v = plus.agent.q[key]
            assert v[1] - v[0] == pytest.approx(2.0, rel=0.05)
    assert picks[True][1:] == [1] * 11
    assert 0 in picks[False][1:]  # without counterfactuals it switches away


def test_calibration_recovers_known_parameters():
    speeds = (4.0, 6.0, 8.0, 10.0, 12.0)
    sc = Scenario("cal", 3, 5, 60.0, (10, 20, 30, 40, 50),
                  (Interval(0, 60, 120.0, 800, speeds),), (Outage(2, 50.0, 60.0),))
    truth = ChainModel(sc, ModelConfig(records="all"), "pbft")
    truth.run_until(60.0)
    est = estimate(truth.records, truth.cfg)
    assert est.up == {"n0": True, "n1": True, "n2": False, "n3": True, "n4": True}
    for i, s in enumerate(speeds):  # with contention the fastest shows in its spacing
        assert est.link_mbps[f"n{i}"] == pytest.approx(s, rel=0.02)
    for i, lat in enumerate((10, 20, 30, 40, 50)):
        assert est.latency_ms[f"n{i}"] == pytest.approx(lat, abs=1.5)
    assert est.tx_size == pytest.approx(800)
    assert est.tps == pytest.approx(120, rel=0.1)
    # and the hook updates a model whose beliefs were wrong
    wrong = Scenario("w", 3, 5, 60.0, (25,) * 5, (Interval(0, 60, 50.0, 300, (1.0,) * 5),))
    twin = ChainModel(wrong, ModelConfig(), "pbft")
    calibrate(twin, truth.records)
    assert twin.net.mbps[0] == pytest.approx(4.0, rel=0.02)
    assert not twin.nodes[2].up and twin.current.tx_size == 800


def test_workloads_are_reproducible_and_replayable(tmp_path):
    wl = load_workload("wl2")
    a, b = wl.scenario(9), wl.scenario(9)
    assert a == b and a != wl.scenario(10)
    a.save(tmp_path / "wl2.json")
    assert Scenario.load(tmp_path / "wl2.json") == a
    replay = Scenario.load(tmp_path / "wl2.json")
    assert np.array_equal(a.tx_stream().times, replay.tx_stream().times)
    assert all(len(iv.link_mbps) == 5 for iv in generate(wl.generator, 3).intervals)


@pytest.mark.parametrize("name", ["fig4a", "fig4b", "fig5", "switching"])
def test_experiment_files_validate(name):
    loaded = load_experiment(ROOT / "experiments" / "paper" / f"{name}.yaml")
    assert loaded.experiment.simulation.job == f"twin.{name}"


@pytest.mark.parametrize("name", ["switching_wl4", "switching_wl5"])
def test_switching_experiment_files_give_valid_job_settings(name):
    from twin.figures import SwitchingSettings

    sim = load_experiment(ROOT / "experiments" / "paper" / f"{name}.yaml").experiment.simulation
    assert sim.job == "twin.switching"
    params = SwitchingSettings(**sim.params)
    load_workload(params.train_workload), load_workload(params.eval_workload)


def test_fig4a_and_fig5_jobs_run_small(tmp_path):
    from twin.figures import Fig4aSettings, Fig5Settings, run_fig4a, run_fig5

    ctx = JobContext(run_dir=tmp_path, seed=3, progress=lambda f, m: None)
    res = run_fig4a(Fig4aSettings(seeds=2, episodes=2, train_scenarios=2), ctx)
    assert {"agent", "agent+", "pbft", "bigfoot", "oracle"} <= set(res)
    assert 0.0 <= res["agent"]["unseen_share"] <= 1.0
    assert "agent+_minus_agent" in res and "switching_gain" in res
    assert (tmp_path / "fig4a.png").stat().st_size > 0
    res5 = run_fig5(Fig5Settings(seeds=2, episodes=1, train_scenarios=1), ctx)
    assert res5["runtime_ratio"] > 0 and (tmp_path / "fig5.png").exists()


def test_training_never_uses_an_evaluation_seed():
    from twin.figures import train_seeds

    evaluated = set(range(1, 100)) | set(range(1001, 1100))
    assert not evaluated & {s for seed in range(1, 2000) for s in train_seeds(seed, 10)}


@pytest.mark.smoke
def test_smoke_twin_episode_writes_csv_and_png(tmp_path):
    """One tiny fig4a job end to end (1 seed, 2 episodes): CSVs and the figure appear."""
    from twin.figures import Fig4aSettings, run_fig4a

    ctx = JobContext(run_dir=tmp_path, seed=1, progress=lambda f, m: None)
    res = run_fig4a(Fig4aSettings(seeds=1, episodes=2, train_scenarios=1), ctx)
    assert {"agent", "pbft", "bigfoot"} <= set(res)
    for name in ("fig4a_episodes.csv", "fig4a_eval_runs.csv", "fig4a_eval_summary.csv"):
        lines = (tmp_path / name).read_text().splitlines()
        assert len(lines) >= 2, name
    png = tmp_path / "fig4a.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
