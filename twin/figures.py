"""The twin paper's figures 4a, 4b and 5, and the switching evaluation, as simulation jobs.

Every job separates training from evaluation (issue 19):

- **Training** (offline, before deployment, in the twin's own model): each repetition
  seed trains a Q-agent on `train_scenarios` scenarios the scenario generator draws from
  the training workload, cycled for `episodes` episodes. Their seeds come from a stream
  of their own (`train_seeds`), so they never coincide with an evaluation seed.
- **Evaluation** (deployment, held out): each repetition seed draws a fresh scenario of
  the evaluation workload with the experiment seed + i. The policies decide from the
  digital twin only (calibrated from the block sensor records; twin.digital); the
  oracle (twin.oracle) and the fixed protocols give the references.

Statistics are paired by seed: per method the mean latency with its 95% t interval,
and the per-seed difference to the best fixed protocol (the fixed protocol with the
lowest mean over the evaluation seeds) with its interval and whether it excludes 0;
the oracle's switching gain and each policy's share of it captured. The shipped
experiment files evaluate on seeds 1001 on (switching_wl4 on 2001 on, switching_wl5 on
3001 on); the settings were tuned on seeds 1-10 (WL4/WL5: 1-40).

Each run writes CSVs into the run folder and draws the figures from those CSVs only
(`report_*` redraws them later).
"""

from __future__ import annotations

import csv
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from testbed.stats import mean_ci, paired_diff  # noqa: E402
from twin.agentplus import AgentPlus, AgentPlusSettings  # noqa: E402
from twin.agents import QAgent, QSettings  # noqa: E402
from twin.env import EnvSettings  # noqa: E402
from twin.experiment import (  # noqa: E402
    EpisodeResult,
    Learner,
    Policy,
    agent_plus_policy,
    fixed,
    q_policy,
    run_episode,
    train,
    whatif_policy,
)
from twin.oracle import oracle_episode  # noqa: E402
from twin.scenarios import Scenario, WorkloadSpec, load_workload  # noqa: E402
from twin.whatif import WhatIfOptimiser, WhatIfSettings  # noqa: E402

TRAIN_SEED_BASE = 10_000_000
"""Training scenarios use seeds from here on (repetition seed * 1000 + k): disjoint from
every evaluation seed the experiment files use."""
POLICIES = ("agent", "agent+", "whatif")
"""Methods that decide (the rest are references)."""


def _switches(actions: list[int]) -> int:
    return sum(a != b for a, b in itertools.pairwise(actions))


def train_seeds(seed: int, n: int) -> list[int]:
    return [TRAIN_SEED_BASE + seed * 1000 + k for k in range(n)]


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seeds: int = Field(default=10, ge=1)
    """Repetitions; repetition i evaluates on experiment seed + i (held out) and trains
    on its own generated scenarios (`train_seeds`)."""
    episodes: int = Field(default=50, ge=1)
    """Offline training episodes per repetition."""
    train_scenarios: int = Field(default=5, ge=1)
    """Distinct generated training scenarios per repetition, cycled over the episodes."""
    train_workload: str = "wl1"
    """Workload name (twin/workloads/<name>.yaml) or path the agents are trained on."""
    env: EnvSettings = EnvSettings()
    """Decision step, reward measure, state encoder, protocols, chain parameters."""
    q: QSettings = QSettings()
    """Q-learning settings."""


class _Evaluation(_Common):
    eval_workload: str = "wl2"
    """Workload of the held-out evaluation."""
    eval_episodes: int = Field(default=1, ge=1)
    """Passes over each evaluation scenario (the agents keep learning online)."""
    whatif: WhatIfSettings = WhatIfSettings()
    """What-if simulation per decision (agent+ and the what-if optimiser)."""
    agent_plus: AgentPlusSettings = AgentPlusSettings()
    """When agent+ asks the what-if simulation, and how its outcomes train it."""
    include_whatif: bool = True
    """Also run the pure what-if optimiser (figure 5 compares its runtime)."""
    include_oracle: bool = True
    """Also run the hindsight oracle (switching gain and share captured)."""


class Fig4aSettings(_Evaluation):
    """Figure 4a: agent training on WL1 (in-sample curve) and a held-out WL1 evaluation."""

    eval_workload: str = "wl1"
    """Workload of the held-out evaluation (fresh scenarios of the training workload)."""
    include_whatif: bool = False


class Fig4bSettings(_Evaluation):
    """Figure 4b (and the data of figure 5): trained on WL1, deployed on drifted WL2."""

    eval_workload: str = "wl2"
    """The drifted workload (the system at a later stage)."""


class Fig5Settings(Fig4bSettings):
    """Figure 5: decision runtime of what-if optimisation vs agent+ over the WL2 horizon."""


class SwitchingSettings(_Evaluation):
    """A workload where the best protocol changes over time (twin/workloads/wl3.yaml:
    crashes; wl4.yaml: network swings)."""

    train_workload: str = "wl3"
    eval_workload: str = "wl3"


# ---- training ----------------------------------------------------------------------------
def training_pool(params: _Common, seed: int, wl: WorkloadSpec) -> list[Scenario]:
    """The repetition's generated training scenarios (cycled over the episodes)."""
    return [wl.scenario(s) for s in train_seeds(seed, params.train_scenarios)]


def whatif_optimiser(params: _Evaluation, seed: int, wl: WorkloadSpec) -> WhatIfOptimiser:
    """What-if as the twin knows it before deployment: futures from the training
    workload's generator, around the calibrated present (not the evaluation truth)."""
    return WhatIfOptimiser(wl.generator, params.env.step_seconds, params.whatif, seed,
                           params.env.protocols)


def _seen(agent: QAgent) -> set[tuple[int, ...]]:
    """States the agent's table has any update in."""
    return {k for k, t in agent.tries.items() if t.sum() > 0}


def pretrain(params: _Common, seed: int, wl: WorkloadSpec,
             on_episode: Callable[[int, Scenario, EpisodeResult, float], None] | None = None
             ) -> QAgent:
    """Offline Q-learning on generated scenarios of `wl` (see the module docstring)."""
    agent = QAgent(len(params.env.protocols), params.q, seed)
    pool = training_pool(params, seed, wl)
    for ep in range(params.episodes):
        sc = pool[ep % len(pool)]
        res = train(agent, sc, params.env, 1, epsilon_episode=ep)[0]
        if on_episode:
            on_episode(ep, sc, res, agent.epsilon(ep))
    return agent


def pretrain_plus(params: _Evaluation, seed: int, wl: WorkloadSpec, agent: QAgent,
                  progress: Callable[[str], None] = lambda m: None) -> AgentPlus:
    """Agent+ before deployment: the agent's table, then `agent_plus.offline_episodes`
    episodes on the same generated training scenarios in which every decision consults
    what-if from the twin's estimated present (twin.agentplus, step 1)."""
    plus = AgentPlus(agent.copy(seed), whatif_optimiser(params, seed, wl), params.agent_plus)
    if not params.agent_plus.offline_episodes:
        return plus
    rng = np.random.default_rng([seed, 0x0FF])
    pool = training_pool(params, seed, wl)

    def act(ctx: Any, key: tuple[int, ...]) -> int:
        return plus.act_offline(key, ctx.twin.model_now, rng)

    for ep in range(params.agent_plus.offline_episodes):
        run_episode(pool[ep % len(pool)], params.env, act, plus)
        progress(f"seed {seed}: agent+ offline what-if episode {ep + 1}")
    return plus


# ---- evaluation ----------------------------------------------------------------------------
def _tracked(policy: Policy, keys: list[tuple[int, ...]]) -> Policy:
    def act(ctx: Any, key: tuple[int, ...]) -> int:
        keys.append(key)
        return policy(ctx, key)
    return act


def evaluate_seed(params: _Evaluation, seed: int, agent: QAgent, train_wl: WorkloadSpec,
                  eval_wl: WorkloadSpec, out: Path,
                  progress: Callable[[str], None] = lambda m: None) -> list[dict[str, Any]]:
    """Every method on the held-out scenario of `seed`; one row per method and pass."""
    sc = eval_wl.scenario(seed)
    sc.save(out / f"{eval_wl.name}_seed{seed}.json")
    seen = _seen(agent)
    plus = pretrain_plus(params, seed, train_wl, agent, progress)
    seen_plus = _seen(plus.agent)
    methods: list[tuple[str, Policy, Learner | None]] = [
        (p, fixed(a), None) for a, p in enumerate(params.env.protocols)]
    online = agent.copy(seed)
    methods += [("agent", q_policy(online), online), ("agent+", agent_plus_policy(plus), plus)]
    if params.include_whatif:
        methods.append(("whatif", whatif_policy(whatif_optimiser(params, seed, train_wl)),
                        None))
    rows: list[dict[str, Any]] = []
    for name, policy, learner in methods:
        for ep in range(params.eval_episodes):
            keys: list[tuple[int, ...]] = []
            calls0 = plus.whatif_decisions
            res = run_episode(sc, params.env, _tracked(policy, keys), learner)
            rows.append({
                "seed": seed, "method": name, "episode": ep + 1, "latency": res.latency,
                "decision_seconds": res.decision_seconds,
                "uncommitted": res.uncommitted, "safety_violations": res.safety_violations,
                "unseen_share": sum(k not in (seen_plus if name == "agent+" else seen)
                                    for k in keys) / max(len(keys), 1),
                "whatif_share": ((plus.whatif_decisions - calls0) / max(len(keys), 1)
                                 if name == "agent+" else (1.0 if name == "whatif" else 0.0)),
                "switches": _switches(res.actions),
            })
        progress(f"seed {seed}: {name} done")
    if params.include_oracle:
        o = oracle_episode(sc, params.env, params.env.protocols)
        rows.append({"seed": seed, "method": "oracle", "episode": 1, "latency": o.latency,
                     "decision_seconds": o.seconds, "uncommitted": o.uncommitted,
                     "safety_violations": o.safety_violations, "unseen_share": 0.0,
                     "whatif_share": 1.0,
                     "switches": _switches(o.actions)})
    return rows


def _evaluation_runs(params: _Evaluation, ctx: Any,
                     on_train: Callable[[int, int, Scenario, EpisodeResult, float], None]
                     | None = None) -> list[dict[str, Any]]:
    out = Path(ctx.run_dir)
    train_wl = load_workload(params.train_workload)
    eval_wl = load_workload(params.eval_workload)
    rows: list[dict[str, Any]] = []
    for i in range(params.seeds):
        seed = ctx.seed + i
        ctx.progress(i / params.seeds, f"seed {seed}: training on {train_wl.name}")

        def log(ep: int, sc: Scenario, res: EpisodeResult, epsilon: float, seed: int = seed,
                i: int = i) -> None:
            ctx.progress((i + 0.5 * (ep + 1) / params.episodes) / params.seeds,
                         f"seed {seed}: training episode {ep + 1}")
            if on_train is not None:
                on_train(seed, ep, sc, res, epsilon)

        agent = pretrain(params, seed, train_wl, log)
        agent.save(out / f"qtable_seed{seed}.json")
        def say(m: str, i: int = i) -> None:
            ctx.progress((i + 0.75) / params.seeds, m)

        rows += evaluate_seed(params, seed, agent, train_wl, eval_wl, out, say)
    return rows


# ---- statistics over the evaluation rows ---------------------------------------------------
def _per_seed(rows: list[dict[str, str]], method: str, field: str,
              agg: str = "mean") -> dict[str, float]:
    seeds: dict[str, list[float]] = {}
    for r in rows:
        if r["method"] == method:
            seeds.setdefault(r["seed"], []).append(float(r[field]))
    return {s: float(np.mean(v) if agg == "mean" else np.sum(v)) for s, v in seeds.items()}


def summarise(rows: list[dict[str, str]], protocols: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per method: mean latency, paired difference to the best fixed protocol,
    share of the oracle's gain captured, and what the method saw and did."""
    methods = [m for m in (*protocols, *POLICIES, "oracle")
               if any(r["method"] == m for r in rows)]
    lat = {m: _per_seed(rows, m, "latency") for m in methods}
    seeds = sorted(set.intersection(*(set(v) for v in lat.values())), key=int)
    fixed_means = {p: float(np.mean([lat[p][s] for s in seeds])) for p in protocols}
    best = min(fixed_means, key=lambda p: fixed_means[p])
    best_v = [lat[best][s] for s in seeds]
    oracle_mean = (float(np.mean([lat["oracle"][s] for s in seeds]))
                   if "oracle" in lat else float("nan"))
    room = fixed_means[best] - oracle_mean
    out: list[dict[str, Any]] = []
    for m in methods:
        v = [lat[m][s] for s in seeds]
        mu, ci = mean_ci(v)
        d, dci, sig = paired_diff(v, best_v) if m != best else (0.0, 0.0, False)
        extra = {f: float(np.mean(list(_per_seed(rows, m, f).values())))
                 for f in ("unseen_share", "whatif_share", "uncommitted", "switches",
                           "safety_violations")}
        out.append({
            "method": m, "seeds": len(seeds), "mean_latency": mu, "ci95": ci,
            "best_fixed": best, "diff_vs_best_fixed": d, "diff_ci95": dci,
            "diff_significant": sig,
            "gain_captured": ((fixed_means[best] - mu) / room
                              if room > 0 and m not in protocols else float("nan")),
            "switching_gain": (room / fixed_means[best] if m == "oracle" else float("nan")),
            "decision_seconds": float(np.mean(list(
                _per_seed(rows, m, "decision_seconds", "sum").values()))),
            **extra})
    return out


def paired_vs(rows: list[dict[str, str]], a: str, b: str) -> tuple[float, float, bool]:
    """Per-seed paired difference a - b of mean latency."""
    la, lb = _per_seed(rows, a, "latency"), _per_seed(rows, b, "latency")
    seeds = sorted(set(la) & set(lb), key=int)
    return paired_diff([la[s] for s in seeds], [lb[s] for s in seeds])


LABELS = {"agent+": "Agent+", "agent": "Agent", "pbft": "IBFT/PBFT", "bigfoot": "BigFoot",
          "whatif": "What-if", "oracle": "Oracle"}


def _label(m: str) -> str:
    return LABELS.get(m, m)


def _draw_evaluation(ax_bar: Any, ax_diff: Any, summary: list[dict[str, Any]],
                     title: str) -> None:
    names = [r["method"] for r in summary]
    ax_bar.bar([_label(m) for m in names], [r["mean_latency"] for r in summary],
               yerr=[r["ci95"] for r in summary], capsize=4,
               color=[f"C{i}" for i in range(len(names))])
    ax_bar.set_ylabel("Avg. transaction latency (s)")
    ax_bar.set_title(f"{title}: mean over {summary[0]['seeds']} seeds, 95% CI")
    ax_bar.tick_params(axis="x", rotation=30)
    best = summary[0]["best_fixed"]
    others = [r for r in summary if r["method"] != best]
    y = np.arange(len(others))
    ax_diff.errorbar([r["diff_vs_best_fixed"] for r in others], y,
                     xerr=[r["diff_ci95"] for r in others], fmt="o", capsize=4)
    ax_diff.axvline(0.0, color="k", lw=0.8)
    ax_diff.set_yticks(y, [_label(r["method"]) + (" *" if r["diff_significant"] else "")
                           for r in others])
    ax_diff.set_xlabel(f"Paired difference to {_label(best)} (s), 95% CI")
    ax_diff.set_title("per seed, held out (* : CI excludes 0)")


def _summary(run_dir: Path, stem: str) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    """The `<stem>_runs.csv` rows and their summary (written to `<stem>_summary.csv`)."""
    rows = _read(run_dir / f"{stem}_runs.csv")
    protocols = tuple(p for p in ("pbft", "bigfoot") if any(r["method"] == p for r in rows))
    protocols += tuple(sorted({r["method"] for r in rows} - set(protocols)
                              - {*POLICIES, "oracle"}))
    summary = summarise(rows, protocols)
    _write(run_dir / f"{stem}_summary.csv", summary)
    return rows, summary


def _result(rows: list[dict[str, str]], summary: list[dict[str, Any]]) -> dict[str, Any]:
    """What a job returns: per method its numbers, agent+ vs agent, the switching gain."""
    out: dict[str, Any] = {r["method"]: {k: r[k] for k in (
        "mean_latency", "ci95", "diff_vs_best_fixed", "diff_ci95", "diff_significant",
        "gain_captured", "unseen_share", "whatif_share", "uncommitted")} for r in summary}
    if "agent+" in out and "agent" in out:
        d, ci, sig = paired_vs(rows, "agent+", "agent")
        out["agent+_minus_agent"] = {"mean": d, "ci95": ci, "significant": sig}
    if "oracle" in out:
        out["switching_gain"] = next(r["switching_gain"] for r in summary
                                     if r["method"] == "oracle")
    return out


def _report_evaluation(run_dir: Path, title: str, stem: str) -> dict[str, Any]:
    rows, summary = _summary(run_dir, stem)
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    _draw_evaluation(a, b, summary, title)
    fig.tight_layout()
    fig.savefig(run_dir / f"{stem}.png", dpi=120)
    plt.close(fig)
    return _result(rows, summary)


# ---- figure 4a -----------------------------------------------------------------------------
def run_fig4a(params: Fig4aSettings, ctx: Any) -> dict[str, Any]:
    out = Path(ctx.run_dir)
    ep_rows: list[dict[str, Any]] = []
    baselines: dict[tuple[int, int], dict[str, float]] = {}

    def on_train(seed: int, ep: int, sc: Scenario, res: EpisodeResult, epsilon: float) -> None:
        key = (seed, sc.seed)
        if key not in baselines:  # the fixed protocols on this training scenario, once
            baselines[key] = {p: run_episode(sc, params.env, fixed(a)).latency
                              for a, p in enumerate(params.env.protocols)}
        ep_rows.append({"seed": seed, "episode": ep + 1, "scenario_seed": sc.seed,
                        "latency": res.latency, "epsilon": epsilon,
                        **{f"latency_{p}": v for p, v in baselines[key].items()}})

    rows = _evaluation_runs(params, ctx, on_train)
    _write(out / "fig4a_episodes.csv", ep_rows)
    _write(out / "fig4a_eval_runs.csv", rows)
    return report_fig4a(out)


def report_fig4a(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    eps = _read(run_dir / "fig4a_episodes.csv")
    protocols = [k[len("latency_"):] for k in eps[0] if k.startswith("latency_")]
    ref = protocols[0]
    by_ep: dict[int, list[float]] = {}
    fixed_ratio: dict[str, list[float]] = {p: [] for p in protocols}
    for r in eps:
        by_ep.setdefault(int(r["episode"]), []).append(
            float(r["latency"]) / float(r[f"latency_{ref}"]))
        for p in protocols:
            fixed_ratio[p].append(float(r[f"latency_{p}"]) / float(r[f"latency_{ref}"]))
    x = sorted(by_ep)
    stats = [mean_ci(by_ep[e]) for e in x]
    rows, summary = _summary(run_dir, "fig4a_eval")
    fig, (ax, bx, cx) = plt.subplots(1, 3, figsize=(16, 4))
    m = np.array([s[0] for s in stats])
    c = np.array([s[1] for s in stats])
    ax.plot(x, m, label="Agent (training episodes)", color="C0")
    ax.fill_between(x, m - c, m + c, color="C0", alpha=0.2)
    for i, p in enumerate(protocols):
        ax.axhline(float(np.mean(fixed_ratio[p])), color=f"C{i + 1}", label=_label(p))
    ax.set_xlabel("Training episode")
    ax.set_ylabel(f"Latency / {_label(ref)} latency, same scenario")
    ax.set_title(f"WL1 training, in sample ({len(by_ep[x[0]])} seeds, 95% CI)")
    ax.legend()
    _draw_evaluation(bx, cx, summary, "WL1 held out")
    fig.tight_layout()
    fig.savefig(run_dir / "fig4a.png", dpi=120)
    plt.close(fig)
    final = {"in_sample_last_episode_ratio": {"mean": float(m[-1]), "ci95": float(c[-1])}}
    return {**final, **_result(rows, summary)}


# ---- figure 4b / 5 / switching ----------------------------------------------------------
def run_fig4b(params: Fig4bSettings, ctx: Any) -> dict[str, Any]:
    _write(Path(ctx.run_dir) / "fig4b_runs.csv", _evaluation_runs(params, ctx))
    return report_fig4b(Path(ctx.run_dir))


def report_fig4b(run_dir: Path) -> dict[str, Any]:
    return _report_evaluation(Path(run_dir), "WL2 (drifted), held out", "fig4b")


def run_switching(params: SwitchingSettings, ctx: Any) -> dict[str, Any]:
    run_dir = Path(ctx.run_dir)
    (run_dir / "switching_workload.txt").write_text(
        f"{load_workload(params.eval_workload).name}\n")
    _write(run_dir / "switching_runs.csv", _evaluation_runs(params, ctx))
    return report_switching(run_dir)


def report_switching(run_dir: Path) -> dict[str, Any]:
    named = Path(run_dir) / "switching_workload.txt"
    wl = named.read_text().strip().upper() if named.exists() else "WL3"
    return _report_evaluation(Path(run_dir), f"{wl} (switching matters), held out",
                              "switching")


def run_fig5(params: Fig5Settings, ctx: Any) -> dict[str, Any]:
    _write(Path(ctx.run_dir) / "fig4b_runs.csv", _evaluation_runs(params, ctx))
    return report_fig5(Path(ctx.run_dir))


def report_fig5(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    rows = _read(run_dir / "fig4b_runs.csv")
    rt = {m: _per_seed(rows, m, "decision_seconds", "sum") for m in ("whatif", "agent+")}
    lat = {m: _per_seed(rows, m, "latency") for m in ("whatif", "agent+")}
    share = mean_ci(list(_per_seed(rows, "agent+", "whatif_share").values()))
    seeds = sorted(set(rt["whatif"]) & set(rt["agent+"]), key=int)
    rt_ci = {m: mean_ci([rt[m][s] for s in seeds]) for m in rt}
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.bar(["Simulation (What-if)", "Agent+"], [rt_ci["whatif"][0], rt_ci["agent+"][0]],
           yerr=[rt_ci["whatif"][1], rt_ci["agent+"][1]], capsize=4, color=["C4", "C0"])
    ax.set_ylabel("Decision runtime over the WL2 horizon (s)")
    ax.set_title(f"{len(seeds)} seeds, 95% CI; agent+ asks what-if in {share[0]:.0%} "
                 "of decisions", fontsize=9)
    fig.tight_layout()
    fig.savefig(run_dir / "fig5.png", dpi=120)
    plt.close(fig)
    # Paired per seed: seeds differ far more in level than the methods do within a seed.
    rt_ratio = mean_ci([rt["agent+"][s] / rt["whatif"][s] for s in seeds if rt["whatif"][s]])
    lat_ratio = mean_ci([lat["agent+"][s] / lat["whatif"][s] for s in seeds
                         if lat["whatif"][s]])
    out: list[dict[str, Any]] = [
        {"method": m, "runtime_s": rt_ci[m][0], "runtime_ci95": rt_ci[m][1],
         "mean_latency": float(np.mean([lat[m][s] for s in seeds]))} for m in rt]
    out.append({"method": "agent+/whatif per seed", "runtime_s": rt_ratio[0],
                "runtime_ci95": rt_ratio[1], "mean_latency": lat_ratio[0]})
    _write(run_dir / "fig5_summary.csv", out)
    return {"runtime_ratio": rt_ratio[0], "runtime_ratio_ci95": rt_ratio[1],
            "latency_ratio": lat_ratio[0], "latency_ratio_ci95": lat_ratio[1],
            "agent+_whatif_share": share[0],
            "what_sets_it": "agent+ runs one what-if evaluation per decision it is unsure "
                            "of (same cost as a what-if decision); its share of decisions "
                            "sets the ratio",
            **{r["method"]: r for r in out[:2]}}
