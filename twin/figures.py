"""The twin paper's figures 4a, 4b and 5 as simulation jobs (see twin/jobs.py).

Each run writes CSVs into the run folder, then draws the figure from those CSVs only
(`report_*` redraws it later). Every repetition seed draws its own WL1 and WL2 from the
named workloads (twin/workloads/*.yaml); the scenarios are saved as JSON for replay.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from testbed.stats import mean_ci  # noqa: E402
from twin.agentplus import AgentPlus, AgentPlusSettings  # noqa: E402
from twin.agents import QAgent, QSettings  # noqa: E402
from twin.env import EnvSettings  # noqa: E402
from twin.experiment import (  # noqa: E402
    Learner,
    agent_plus_policy,
    fixed,
    q_policy,
    run_episode,
    train,
    whatif_policy,
)
from twin.scenarios import load_workload  # noqa: E402
from twin.whatif import WhatIfOptimiser, WhatIfSettings  # noqa: E402


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

    seeds: int = Field(default=5, ge=1)
    """Repetitions; seed i uses experiment seed + i for workloads and agents."""
    episodes: int = Field(default=50, ge=1)
    """Training episodes (passes over WL1)."""
    train_workload: str = "wl1"
    """Workload name (twin/workloads/<name>.yaml) or path used for training."""
    env: EnvSettings = EnvSettings()
    """Decision step, reward measure and chain parameters."""
    q: QSettings = QSettings()
    """Q-learning settings."""


class Fig4aSettings(_Common):
    """Figure 4a: agent training on WL1 against always-PBFT and always-BigFoot."""


class Fig4bSettings(_Common):
    """Figure 4b (and the data of figure 5): WL2 with agent, agent+, PBFT, BigFoot, what-if."""

    eval_workload: str = "wl2"
    """The drifted workload (the system at a later stage)."""
    eval_episodes: int = Field(default=5, ge=1)
    """Passes over WL2 (the agents keep learning online from real steps)."""
    whatif: WhatIfSettings = WhatIfSettings()
    """What-if simulation per decision."""
    agent_plus: AgentPlusSettings = AgentPlusSettings()
    """When agent+ asks the what-if simulation."""
    include_whatif: bool = True
    """Also run the pure what-if optimiser (needed for figure 5 and the 5% check)."""


class Fig5Settings(Fig4bSettings):
    """Figure 5: decision runtime of what-if optimisation vs agent+ over the WL2 horizon."""


# ---- figure 4a ---------------------------------------------------------------------------
def run_fig4a(params: Fig4aSettings, ctx: Any) -> dict[str, Any]:
    out = Path(ctx.run_dir)
    wl = load_workload(params.train_workload)
    ep_rows: list[dict[str, Any]] = []
    base_rows: list[dict[str, Any]] = []
    for i in range(params.seeds):
        seed = ctx.seed + i
        sc = wl.scenario(seed)
        sc.save(out / f"{wl.name}_seed{seed}.json")
        for a, name in enumerate(("pbft", "bigfoot")):
            res = run_episode(sc, params.env, fixed(a))
            base_rows.append({"seed": seed, "method": name, "latency": res.latency,
                              "safety_violations": res.safety_violations})
        agent = QAgent(2, params.q, seed)

        def log(ep: int, res: Any, seed: int = seed, i: int = i, agent: QAgent = agent) -> None:
            ep_rows.append({"seed": seed, "episode": ep + 1, "latency": res.latency,
                            "epsilon": agent.epsilon(ep),
                            "safety_violations": res.safety_violations})
            ctx.progress((i + (ep + 1) / params.episodes) / params.seeds,
                         f"seed {seed} episode {ep + 1}")

        train(agent, sc, params.env, params.episodes, log)
        res = run_episode(sc, params.env, q_policy(agent))
        base_rows.append({"seed": seed, "method": "agent", "latency": res.latency,
                          "safety_violations": res.safety_violations})
        agent.save(out / f"qtable_seed{seed}.json")
    _write(out / "fig4a_episodes.csv", ep_rows)
    _write(out / "fig4a_final.csv", base_rows)
    return report_fig4a(out)


def report_fig4a(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    eps = _read(run_dir / "fig4a_episodes.csv")
    final = _read(run_dir / "fig4a_final.csv")
    by_ep: dict[int, list[float]] = {}
    for r in eps:
        by_ep.setdefault(int(r["episode"]), []).append(float(r["latency"]))
    x = sorted(by_ep)
    stats = [mean_ci(by_ep[e]) for e in x]
    summary = {m: mean_ci([float(r["latency"]) for r in final if r["method"] == m])
               for m in ("agent", "pbft", "bigfoot")}
    fig, ax = plt.subplots(figsize=(6, 4))
    m = np.array([s[0] for s in stats])
    c = np.array([s[1] for s in stats])
    ax.plot(x, m, label="Agent", color="C0")
    ax.fill_between(x, m - c, m + c, color="C0", alpha=0.2)
    for name, label, color in (("pbft", "IBFT/PBFT", "C1"), ("bigfoot", "BigFoot", "C2")):
        mu, ci = summary[name]
        ax.axhline(mu, color=color, label=label)
        ax.axhspan(mu - ci, mu + ci, color=color, alpha=0.15)
    ax.set_xlabel("Episode")
    ax.set_ylabel("Avg. transaction latency (s)")
    ax.set_title(f"WL1 training ({len(by_ep[x[0]])} seeds, 95% CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "fig4a.png", dpi=120)
    plt.close(fig)
    rows: list[dict[str, Any]] = [{"method": k, "mean_latency": v[0], "ci95": v[1]}
                                  for k, v in summary.items()]
    _write(run_dir / "fig4a_summary.csv", rows)
    return {r["method"]: {"mean": r["mean_latency"], "ci95": r["ci95"]} for r in rows}


# ---- figure 4b / 5 -----------------------------------------------------------------------
def _wl2_runs(params: Fig4bSettings, ctx: Any) -> list[dict[str, Any]]:
    out = Path(ctx.run_dir)
    train_wl = load_workload(params.train_workload)
    eval_wl = load_workload(params.eval_workload)
    rows: list[dict[str, Any]] = []
    step = params.env.step_seconds
    for i in range(params.seeds):
        seed = ctx.seed + i
        sc1 = train_wl.scenario(seed)
        sc2 = eval_wl.scenario(seed)
        sc2.save(out / f"{eval_wl.name}_seed{seed}.json")
        ctx.progress(i / params.seeds, f"seed {seed}: training on {train_wl.name}")
        trained = QAgent(2, params.q, seed)
        train(trained, sc1, params.env, params.episodes)
        agent = trained.copy(seed)
        plus = AgentPlus(trained.copy(seed),
                         WhatIfOptimiser(eval_wl.generator, step, params.whatif, seed),
                         params.agent_plus)
        opt = WhatIfOptimiser(eval_wl.generator, step, params.whatif, seed)
        methods: list[tuple[str, Any, Learner | None]] = [
            ("pbft", fixed(0), None), ("bigfoot", fixed(1), None),
            ("agent", q_policy(agent), agent), ("agent+", agent_plus_policy(plus), plus)]
        if params.include_whatif:
            methods.append(("whatif", whatif_policy(opt), None))
        for name, policy, learner in methods:
            lat_n = 0.0
            dec = 0.0
            viol = 0
            for ep in range(params.eval_episodes):
                res = run_episode(sc2, params.env, policy, learner)
                lat_n += res.latency
                dec += res.decision_seconds
                viol += res.safety_violations
                rows.append({"seed": seed, "method": name, "episode": ep + 1,
                             "latency": res.latency, "decision_seconds": res.decision_seconds,
                             "safety_violations": res.safety_violations})
            ctx.progress((i + 1) / params.seeds, f"seed {seed}: {name} done")
        rows.append({"seed": seed, "method": "agent+_whatif_share", "episode": 0,
                     "latency": plus.whatif_decisions
                     / max(plus.whatif_decisions + plus.agent_decisions, 1),
                     "decision_seconds": 0.0, "safety_violations": 0})
    return rows


def _per_seed(rows: list[dict[str, str]], method: str, field: str, agg: str) -> list[float]:
    seeds: dict[str, list[float]] = {}
    for r in rows:
        if r["method"] == method:
            seeds.setdefault(r["seed"], []).append(float(r[field]))
    return [float(np.mean(v)) if agg == "mean" else float(np.sum(v)) for v in seeds.values()]


def run_fig4b(params: Fig4bSettings, ctx: Any) -> dict[str, Any]:
    _write(Path(ctx.run_dir) / "wl2_runs.csv", _wl2_runs(params, ctx))
    return report_fig4b(Path(ctx.run_dir))


def report_fig4b(run_dir: Path) -> dict[str, Any]:
    rows = _read(Path(run_dir) / "wl2_runs.csv")
    names = [m for m in ("agent+", "agent", "pbft", "bigfoot", "whatif")
             if any(r["method"] == m for r in rows)]
    summary = {m: mean_ci(_per_seed(rows, m, "latency", "mean")) for m in names}
    labels = {"agent+": "Agent+", "agent": "Agent", "pbft": "IBFT/PBFT", "bigfoot": "BigFoot",
              "whatif": "What-if"}
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar([labels[m] for m in names], [summary[m][0] for m in names],
           yerr=[summary[m][1] for m in names], capsize=4,
           color=[f"C{i}" for i in range(len(names))])
    ax.set_ylabel("Avg. transaction latency (s)")
    ax.set_title("WL2 (mean over seeds, 95% CI)")
    fig.tight_layout()
    fig.savefig(Path(run_dir) / "fig4b.png", dpi=120)
    plt.close(fig)
    out: list[dict[str, Any]] = [{"method": m, "mean_latency": summary[m][0],
                                  "ci95": summary[m][1]} for m in names]
    _write(Path(run_dir) / "fig4b_summary.csv", out)
    return {r["method"]: {"mean": r["mean_latency"], "ci95": r["ci95"]} for r in out}


def run_fig5(params: Fig5Settings, ctx: Any) -> dict[str, Any]:
    _write(Path(ctx.run_dir) / "wl2_runs.csv", _wl2_runs(params, ctx))
    return report_fig5(Path(ctx.run_dir))


def report_fig5(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    rows = _read(run_dir / "wl2_runs.csv")
    rt = {m: mean_ci(_per_seed(rows, m, "decision_seconds", "sum")) for m in ("whatif", "agent+")}
    lat = {m: mean_ci(_per_seed(rows, m, "latency", "mean")) for m in ("whatif", "agent+")}
    share = mean_ci(_per_seed(rows, "agent+_whatif_share", "latency", "mean"))
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.bar(["Simulation (What-if)", "Agent+"], [rt["whatif"][0], rt["agent+"][0]],
           yerr=[rt["whatif"][1], rt["agent+"][1]], capsize=4, color=["C4", "C0"])
    ax.set_ylabel("Runtime (s)")
    ax.set_title("Decision runtime over the WL2 horizon")
    fig.tight_layout()
    fig.savefig(run_dir / "fig5.png", dpi=120)
    plt.close(fig)
    ratio = rt["agent+"][0] / rt["whatif"][0] if rt["whatif"][0] else float("nan")
    lat_ratio = lat["agent+"][0] / lat["whatif"][0] if lat["whatif"][0] else float("nan")
    # Paired per seed: seeds differ far more in level than the methods do within a seed.
    paired_rt = mean_ci(_paired_ratios(rows, "decision_seconds", "sum"))
    paired_lat = mean_ci(_paired_ratios(rows, "latency", "mean"))
    out: list[dict[str, Any]] = [{"method": m, "runtime_s": rt[m][0], "runtime_ci95": rt[m][1],
            "mean_latency": lat[m][0], "latency_ci95": lat[m][1]} for m in rt]
    out.append({"method": "agent+/whatif", "runtime_s": ratio, "runtime_ci95": 0.0,
                "mean_latency": lat_ratio, "latency_ci95": 0.0})
    out.append({"method": "agent+/whatif per seed", "runtime_s": paired_rt[0],
                "runtime_ci95": paired_rt[1], "mean_latency": paired_lat[0],
                "latency_ci95": paired_lat[1]})
    _write(run_dir / "fig5_summary.csv", out)
    return {"runtime_ratio": ratio, "latency_ratio": lat_ratio,
            "paired_runtime_ratio": {"mean": paired_rt[0], "ci95": paired_rt[1]},
            "paired_latency_ratio": {"mean": paired_lat[0], "ci95": paired_lat[1]},
            "agent+_whatif_share": share[0], **{r["method"]: r for r in out[:2]}}


def _paired_ratios(rows: list[dict[str, str]], field: str, agg: str) -> list[float]:
    """agent+ / what-if per seed, for seeds that have both."""
    per: dict[str, dict[str, list[float]]] = {}
    for r in rows:
        if r["method"] in ("agent+", "whatif"):
            per.setdefault(r["seed"], {}).setdefault(r["method"], []).append(float(r[field]))
    out = []
    for v in per.values():
        if len(v) == 2:
            a, w = ((float(np.mean(x)) if agg == "mean" else float(np.sum(x)))
                    for x in (v["agent+"], v["whatif"]))
            if w:
                out.append(a / w)
    return out
