"""The DQN (abn/dqn.py, TensorFlow) and the numpy `dqn` allocator (abn/dqn_policy.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from abn.allocators import get_allocator, residual_capacity
from abn.dqn_baselines import ACTION_NAMES
from abn.dqn_env import BandwidthEnv, DqnEnvSettings, ObservationSettings, encode
from abn.dqn_policy import POLICY_ENV, POLICY_JSON, DQNAllocator, load_policy
from abn.flows import FlowKey, FlowView
from tests.unit.abn.test_dqn_env import TWO_FLOWS, TWO_FLOWS_OPTIMUM

RECORDED = Path(__file__).with_name("recorded_table.json")
ROOT = Path(__file__).resolve().parents[3]


def test_nothing_imports_tensorflow_until_an_agent_is_made() -> None:
    code = ("import sys, abn.allocators, abn.dqn_env, abn.dqn, abn.dqn_policy, abn.jobs, "
            "abn.dqn_figures, abn.tcp_models, testbed.jobs; testbed.jobs.get('abn.fig10'); "
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


def test_replay_is_a_bounded_ring() -> None:
    from abn.dqn import ReplayBuffer

    buf = ReplayBuffer(3, 2)
    for i in range(5):
        buf.add(np.full(2, i, np.float32), i % 2, float(i), np.full(2, i + 1, np.float32), False)
    assert buf.size == 3
    assert sorted(buf.reward.tolist()) == [2.0, 3.0, 4.0]  # the oldest two are gone
    packed = buf.sample_packed(np.random.default_rng(0), 8)
    assert packed.shape == (8, 2 + 2 + 3)
    assert set(packed[:, 5].tolist()) <= {2.0, 3.0, 4.0}
    assert np.all(packed[:, 2] == packed[:, 0] + 1)  # next_obs beside obs, same row


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A (barely trained) agent on the paper's model, saved."""
    from abn.dqn import DQNSettings, make_agent, train

    env = BandwidthEnv(DqnEnvSettings(episode_slots=30))
    agent = make_agent(env, DQNSettings(learn_start=32), seed=3)
    train(env, agent, [1, 2])
    assert agent.train_steps > 0
    return agent.save(tmp_path_factory.mktemp("policy") / "dqn")


def test_the_target_net_is_fixed_between_updates() -> None:
    """Fixed Q-targets: target_net changes only every `target_update` train steps, and
    then becomes a copy of eval_net."""
    from abn.dqn import DQNAgent, DQNSettings

    agent = DQNAgent(6, 3, DQNSettings(target_update=4, batch_size=8, learning_rate=0.01),
                     seed=3, jit_compile=False)
    rng = np.random.default_rng(0)
    for _ in range(64):
        agent.replay.add(rng.normal(size=6), int(rng.integers(3)), float(rng.normal()),
                         rng.normal(size=6), False)

    def weights(net: object) -> list[np.ndarray]:
        return [np.array(w.numpy()) for w in net.weights]  # type: ignore[attr-defined]

    held = weights(agent.target_net)
    for step in range(1, 13):
        agent.train_batch(agent.replay.sample_packed(agent.rng, 8), np.zeros(6, np.float32))
        now = weights(agent.target_net)
        if step % 4:
            assert all(np.array_equal(a, b) for a, b in zip(held, now, strict=True)), step
        else:
            assert not all(np.array_equal(a, b) for a, b in zip(held, now, strict=True))
            assert all(np.array_equal(a, b) for a, b in
                       zip(now, weights(agent.eval_net), strict=True))
            held = now


def test_save_and_load_give_identical_q_values(saved: Path) -> None:
    from abn.dqn import DQNAgent

    doc = json.loads((saved / POLICY_JSON).read_text())
    assert doc["dqn"]["hidden"] == [20, 20] and doc["action_names"] == list(ACTION_NAMES)
    x = np.random.default_rng(0).uniform(size=(5, ObservationSettings().size)).astype(np.float32)
    a = DQNAgent.load(saved)
    b = DQNAgent.load(saved)
    qa = np.stack([a.q_values(o) for o in x])
    assert np.array_equal(qa, np.stack([b.q_values(o) for o in x]))
    assert np.array_equal(a.target_net.get_weights()[0], a.eval_net.get_weights()[0])
    policy = load_policy(saved)  # the numpy forward pass the shim runs
    assert np.allclose(np.stack([policy.q_values(o) for o in x]), qa, atol=1e-5)
    assert [policy.act(o) for o in x] == [int(np.argmax(q)) for q in qa]


def test_a_policy_for_other_actions_is_refused(saved: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    doc = json.loads((saved / POLICY_JSON).read_text())
    doc["action_names"] = ["average", "edf"]
    (other / POLICY_JSON).write_text(json.dumps(doc))
    (other / "weights.npz").write_bytes((saved / "weights.npz").read_bytes())
    with pytest.raises(ValueError, match="retrain"):
        load_policy(other)
    with pytest.raises(ValueError, match="not a readable"):
        load_policy(tmp_path / "missing")


def test_dqn_allocator_keeps_within_capacity_on_a_recorded_table(
        saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = json.loads(RECORDED.read_text())
    flows = [FlowView.from_dict(f) for f in recorded["flows"]]
    c_r = residual_capacity(recorded["capacity_bps"], recorded["non_tcp_bps"],
                            recorded["control_bps"])
    monkeypatch.delenv(POLICY_ENV, raising=False)
    with pytest.raises(ValueError, match=POLICY_ENV):
        get_allocator("dqn")
    monkeypatch.setenv(POLICY_ENV, str(saved))
    alloc = get_allocator("dqn")
    assert isinstance(alloc, DQNAllocator) and alloc.name == "dqn"
    rates = alloc.allocate(flows, c_r, recorded["period_s"])
    assert set(rates) == {f.key for f in flows}
    assert all(r >= 0 for r in rates.values())
    assert sum(rates.values()) <= c_r * (1 + 1e-9)
    chosen = alloc.last_action
    assert chosen is not None
    assert chosen == int(np.argmax(alloc.policy.q_values(
        encode(flows, c_r, recorded["period_s"], alloc.policy.observation))))
    for a, template in enumerate(alloc.templates):  # whichever template it had chosen
        forced = template.allocate(flows, c_r, recorded["period_s"])
        assert sum(forced.values()) <= c_r * (1 + 1e-9), ACTION_NAMES[a]
        if a == chosen:
            assert forced == rates
    big = [FlowView(FlowKey(f"10.9.{i // 256}.{i % 256}", i, "10.0.0.1", 1),
                    None if i % 3 else 10_000 * i, None if i % 5 == 0 else i % 4, 0)
           for i in range(200)]  # more flows than the state holds, unknown sizes too
    assert sum(alloc.allocate(big, c_r, 0.1).values()) <= c_r * (1 + 1e-9)


@pytest.mark.slow
def test_a_short_training_learns_the_best_allocation_of_the_toy() -> None:
    """TWO_FLOWS: only EDF-like templates (serve the fat flow, due first, for two slots)
    finish both flows; smallest-first and equal shares finish the slim one at once and
    lose the fat one, which pays more immediately. Exhaustive search over action
    sequences confirms the optimum; the greedy policy after training must reach it."""
    import itertools

    from abn.dqn import DQNSettings, make_agent, train

    env = BandwidthEnv(TWO_FLOWS)
    best = 0.0
    for seq in itertools.product(range(len(ACTION_NAMES)), repeat=3):
        env.reset(seed=0)
        best = max(best, sum(env.step(a)[1] for a in seq))
    assert best == TWO_FLOWS_OPTIMUM
    settings = DQNSettings(learning_rate=0.003, optimizer="adam", discount=0.99,
                           learn_start=100, target_update=25, epsilon_decay_steps=1050,
                           epsilon_end=0.1, replay_size=1500, reward_scale=0.1)
    agent = make_agent(env, settings, seed=1)
    train(env, agent, [0] * 500)
    obs, _ = env.reset(seed=0)
    first = int(np.argmax(agent.q_values(obs)))
    assert ACTION_NAMES[first] in ("edf", "edf_admit")
    total = 0.0
    for _ in range(3):
        obs, r, *_ = env.step(int(np.argmax(agent.q_values(obs))))
        total += r
    assert total == TWO_FLOWS_OPTIMUM
