"""Speed of the ABN paper's DQN (issue 15): train steps per second, compiled vs eager,
and the trained policy's single-decision latency as the shim's `dqn` allocator.

Rows:
- train step, tf.function (and with XLA): one compiled call = a gradient step on a batch
  of 32 sampled from the replay plus Q(next state) for acting, as in training;
- train step, eager Keras fit: the same update done the common way, target Q-values
  by `predict` and one `fit` call per step;
- training loop: environment step + epsilon-greedy action + train step, on the paper's
  model (what a figure job gets);
- decision: `DQNAllocator.allocate` on flow tables of the paper's model (encode the
  table, numpy forward pass, the chosen template's rates), p50/p99 in microseconds,
  against the allocation period.

Target (issue 15): >= 300 train steps/s on 2 cores; a decision well under the period.

    .venv/bin/python benchmarks/dqn.py [--steps 2000] [--threads 0] [--json out.json]
--threads 0 leaves TensorFlow's thread pools at their defaults (all cores); the figure
jobs use 1 per worker. Needs no root.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

from abn.dqn import DQNAgent, DQNSettings, make_agent, train  # noqa: E402
from abn.dqn_env import BandwidthEnv  # noqa: E402
from abn.dqn_policy import DQNAllocator  # noqa: E402


def filled(agent: DQNAgent, env: BandwidthEnv, n: int) -> None:
    """Fill the replay with real transitions of the paper's model."""
    obs, _ = env.reset(seed=1)
    for t in range(n):
        nxt, r, _, trunc, _ = env.step(t % 4)
        agent.replay.add(obs, t % 4, r * 0.01, nxt, trunc)
        obs = env.reset(seed=t)[0] if trunc else nxt


def compiled_rate(agent: DQNAgent, steps: int) -> float:
    now = agent.replay.obs[0]
    for _ in range(50):  # trace, compile, warm
        agent.train_batch(agent.replay.sample_packed(agent.rng, 32), now)
    t = time.perf_counter()
    for _ in range(steps):
        loss, q = agent.train_batch(agent.replay.sample_packed(agent.rng, 32), now)
        np.asarray(q)
    float(loss)
    return steps / (time.perf_counter() - t)


def eager_fit_rate(agent: DQNAgent, steps: int) -> float:
    """The DQN update the way Keras tutorials do it: targets from predict, then fit."""
    import keras

    net = agent.eval_net
    net.compile(optimizer=keras.optimizers.RMSprop(agent.settings.learning_rate),
                loss=keras.losses.Huber())
    gamma = agent.settings.discount

    def step() -> None:
        obs, act, rew, nxt, term = agent.replay.sample(agent.rng, 32)
        q_next = agent.target_net.predict(nxt, verbose=0).max(axis=1)
        y = net.predict(obs, verbose=0)
        y[np.arange(32), act] = rew + gamma * (1 - term) * q_next
        net.fit(obs, y, batch_size=32, epochs=1, verbose=0)
        net.predict(obs[:1], verbose=0)  # Q of the next state, to act

    for _ in range(5):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t)


def loop_rate(env: BandwidthEnv, threads: int | None, episodes: int) -> float:
    agent = make_agent(env, DQNSettings(learn_start=32), seed=2, threads=threads)
    train(env, agent, [1])  # warm
    logs = train(env, agent, range(2, 2 + episodes))
    return sum(env.settings.episode_slots for _ in logs) / sum(lg.seconds for lg in logs)


def decision_latency(agent: DQNAgent, env: BandwidthEnv, n: int) -> tuple[float, float, int]:
    """p50, p99 (us) of DQNAllocator.allocate on the model's tables; the largest table."""
    with tempfile.TemporaryDirectory() as tmp:
        alloc = DQNAllocator(agent.save(Path(tmp) / "policy"))
    s = env.settings
    tables = []
    env.reset(seed=9)
    for t in range(s.episode_slots):  # every slot's table, light and heavy
        tables.append(env.flow_views())
        env.step(t % 4)
    lat = []
    for i in range(n):
        views = tables[i % len(tables)]
        t0 = time.perf_counter()
        rates = alloc.allocate(views, s.capacity_bps, s.slot_s)
        lat.append(time.perf_counter() - t0)
        assert sum(rates.values()) <= s.capacity_bps * (1 + 1e-9)
    us = np.array(lat) * 1e6
    return float(np.percentile(us, 50)), float(np.percentile(us, 99)), max(map(len, tables))


def shim_period_latency(agent: DQNAgent, n_flows: int, periods: int = 500,
                        declared: float = 0.25) -> tuple[float, float]:
    """p50, p99 (us) of the Python side of one shim period with the `dqn` allocator:
    what `abn.shim.Shim.step` does after the compiled loop's snapshot (account each
    flow's packets, expire, close the period, allocate with the floor, set the rates),
    on a table of `n_flows` sending flows, a quarter of them declared (size and
    deadline), the rest of unknown size, as live traffic is."""
    from abn.flows import FlowKey, FlowTable
    from abn.shim import with_floor

    with tempfile.TemporaryDirectory() as tmp:
        alloc = DQNAllocator(agent.save(Path(tmp) / "policy"))
    rng = np.random.default_rng(5)
    table = FlowTable()
    keys = [FlowKey(f"10.0.{i // 250}.{i % 250 + 1}", 40000 + i, "10.9.0.1", 5201)
            for i in range(n_flows)]
    lat = []
    for t in range(periods):
        now = t * 0.1
        t0 = time.perf_counter()
        for i, k in enumerate(keys):
            if t == 0 and i < declared * n_flows:
                table.register(k, now, int(rng.integers(64_000, 2_000_000)), 2)
            table.observe(k, now, int(rng.integers(1, 40)) * 1448, False, wire_bytes=1500)
        table.expire(now, 5.0)
        table.take_period()
        active = [v for v in table.views() if v.last_period_bytes > 0]
        rates = with_floor(alloc, active, 100e6, 0.1, 0.25)
        table.set_rates(rates)
        lat.append(time.perf_counter() - t0)
    us = np.array(lat[10:]) * 1e6
    return float(np.percentile(us, 50)), float(np.percentile(us, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000, help="compiled train steps timed")
    ap.add_argument("--eager-steps", type=int, default=100)
    ap.add_argument("--episodes", type=int, default=5, help="training-loop episodes timed")
    ap.add_argument("--decisions", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=1,
                    help="TensorFlow intra/inter-op threads (0: TensorFlow's default)")
    common.add_json_option(ap)
    args = ap.parse_args()
    threads = args.threads or None
    env = BandwidthEnv()
    t0 = time.perf_counter()
    agent = make_agent(env, DQNSettings(), seed=1, threads=threads)
    build_s = time.perf_counter() - t0
    filled(agent, env, 2000)
    xla = compiled_rate(agent, args.steps)
    plain = make_agent(env, DQNSettings(), seed=1, threads=threads, jit_compile=False)
    filled(plain, env, 2000)
    nojit = compiled_rate(plain, args.steps)
    fitted = make_agent(env, DQNSettings(), seed=1, threads=threads)
    filled(fitted, env, 2000)
    eager = eager_fit_rate(fitted, args.eager_steps)
    loop = loop_rate(env, threads, args.episodes)
    p50, p99, biggest = decision_latency(agent, env, args.decisions)
    period_us = env.settings.slot_s * 1e6
    rows = [
        {"what": "train step, tf.function + XLA", "per_s": round(xla, 1)},
        {"what": "train step, tf.function", "per_s": round(nojit, 1)},
        {"what": "train step, eager Keras fit", "per_s": round(eager, 1)},
        {"what": "training loop (env + act + train)", "per_s": round(loop, 1)},
        {"what": "decision p50 (us)", "per_s": round(p50, 1)},
        {"what": "decision p99 (us)", "per_s": round(p99, 1)},
    ]
    print(f"TensorFlow threads: {args.threads or 'default'}; agent build {build_s:.1f} s "
          f"(first includes importing TensorFlow)")
    for r in rows[:4]:
        print(f"{r['what']:38s} {r['per_s']:9.1f} steps/s")
    print(f"compiled / eager fit: {xla / eager:.0f}x (XLA), {nojit / eager:.0f}x (tf.function)")
    print(f"decision (DQNAllocator.allocate, up to {biggest} flows): p50 {p50:.0f} us, "
          f"p99 {p99:.0f} us = {p99 / period_us:.2e} of a {env.settings.slot_s:g} s slot, "
          f"{p99 / 1e5:.2e} of the shim's 0.1 s period")
    for n in (8, 50, 200):
        q50, q99 = shim_period_latency(agent, n)
        rows.append({"what": f"shim period, {n} flows, p99 (us)", "per_s": round(q99, 1)})
        print(f"shim period in Python with the dqn allocator, {n} flows: p50 {q50:.0f} us, "
              f"p99 {q99:.0f} us = {q99 / 1e5:.2e} of the 0.1 s period")
    common.write_json(args.json, rows)


if __name__ == "__main__":
    main()
