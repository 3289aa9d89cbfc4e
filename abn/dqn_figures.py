"""The ABN paper's Figures 9-11 as simulation jobs (registered in abn/jobs.py).

- fig9: the DQN's training loss over train steps;
- fig10: episode reward over training for several learning rates;
- fig11: cumulative reward as the slim flows per round grow (the paper's schedule), for
  the DQN, the Cubic-like and BBR-like senders, average (Algorithm 1), EDF and the
  other fixed action templates, on held-out schedules.

Every run streams its rows into CSVs in the run folder as episodes end
(`abn.dqn_runs`), saves each trained policy under `policies/`, and then draws its
figure and summary from those CSVs only (`report_*` redraws them later). Each
repetition seed trains its own agent; means and 95% t intervals (testbed.stats) are
over repetitions; comparisons are paired by repetition (same held-out schedules).
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from pydantic import BaseModel, ConfigDict, Field  # noqa: E402

from abn.dqn import DQNSettings  # noqa: E402  (no TensorFlow at import)
from abn.dqn_env import DqnEnvSettings  # noqa: E402
from abn.dqn_runs import (  # noqa: E402
    BASELINES,
    EVAL_BASE,
    TRAIN_BASE,
    CsvSink,
    Task,
    eval_schedule_seeds,
    run_tasks,
)
from testbed.stats import mean_ci  # noqa: E402

LABELS = {"dqn": "ABN-DQN", "average": "Average (Alg. 1)", "edf": "EDF", "edf_admit": "EDF-admit",
          "srpt": "SRPT", "cubic": "Cubic-like", "bbr": "BBR-like"}


class _Common(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seeds: int = Field(default=3, ge=1)
    """Repetitions; repetition i uses seed (experiment seed + i) for its agent and names
    its training and held-out schedules (abn/dqn_runs.py)."""
    episodes: int = Field(default=100, ge=1)
    """Training episodes per repetition (each a fresh training schedule)."""
    env: DqnEnvSettings = DqnEnvSettings()
    """The public-network model (capacity, slot, flow classes, the paper's schedule)."""
    dqn: DQNSettings = DQNSettings()
    """DQN hyper-parameters (fig10 overrides the learning rate)."""
    workers: int = Field(default_factory=lambda: min(2, os.cpu_count() or 1), ge=1)
    """Training processes at once (1: in this process)."""
    tf_threads: int = Field(default=1, ge=1)
    """TensorFlow intra- and inter-op threads per worker (one is fastest for these
    small networks)."""


class Fig9Settings(_Common):
    """Figure 9: training loss of the DQN over train steps."""


class Fig10Settings(_Common):
    """Figure 10: episode reward during training, one curve per learning rate."""

    learning_rates: tuple[float, ...] = (0.1, 0.01, 0.001, 0.0001)
    eval_episodes: int = Field(default=3, ge=0)
    """Held-out schedules on which each trained policy (greedy) and the reference
    allocators are evaluated."""


class Fig11Settings(_Common):
    """Figure 11: cumulative reward as slim flows increase, DQN vs baselines."""

    eval_episodes: int = Field(default=5, ge=1)
    """Held-out schedules per repetition for every method."""
    baselines: tuple[str, ...] = BASELINES
    """Compared methods (abn.dqn_runs.BASELINES)."""


def _tasks(prefix: str, params: _Common, ctx: Any, lrs: Sequence[float], eval_episodes: int,
           baselines: Sequence[str]) -> list[Task]:
    out = Path(ctx.run_dir)
    bad = [b for b in baselines if b not in BASELINES]
    if bad:
        raise ValueError(f"unknown baselines {bad}; known: {list(BASELINES)}")
    return [Task(prefix, ctx.seed + i, lr, params.episodes, params.env, params.dqn,
                 str(out / "policies" / f"lr{lr:g}_seed{ctx.seed + i}"), eval_episodes,
                 tuple(baselines), params.tf_threads)
            for lr in lrs for i in range(params.seeds)]


def _run(prefix: str, params: _Common, ctx: Any, lrs: Sequence[float], eval_episodes: int,
         baselines: Sequence[str]) -> None:
    out = Path(ctx.run_dir)
    out.mkdir(parents=True, exist_ok=True)
    sink = CsvSink(out)
    seeds = [ctx.seed + i for i in range(params.seeds)]
    (out / f"{prefix}_seeds.json").write_text(json.dumps({
        "repetition_seeds": seeds,
        "train_schedule_seeds": {str(r): [TRAIN_BASE + r * 100_000,
                                          TRAIN_BASE + r * 100_000 + params.episodes - 1]
                                 for r in seeds},
        "heldout_schedule_seeds": {str(r): eval_schedule_seeds(r, eval_episodes)
                                   for r in seeds},
        "note": f"training schedules come from {TRAIN_BASE}+, held-out ones from {EVAL_BASE}+; "
                "no held-out schedule is ever trained on"}, indent=1))
    try:
        run_tasks(_tasks(prefix, params, ctx, lrs, eval_episodes, baselines), sink,
                  params.workers, ctx.progress)
    finally:
        sink.close()


def _read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _ci(xs: Sequence[float]) -> dict[str, float]:
    m, c = mean_ci(list(xs))
    return {"mean": m, "ci95": c, "n": len(xs)}


def _band(ax: Any, x: np.ndarray, per_seed: list[np.ndarray], label: str, color: str
          ) -> None:
    n = min(len(a) for a in per_seed)
    stats = [mean_ci([float(a[i]) for a in per_seed]) for i in range(n)]
    m = np.array([s[0] for s in stats])
    c = np.array([s[1] for s in stats])
    ax.plot(x[:n], m, color=color, label=label, lw=1.2)
    ax.fill_between(x[:n], m - c, m + c, color=color, alpha=0.2, lw=0)


def _per_seed(rows: list[dict[str, str]], field: str, lr: str | None = None
              ) -> dict[str, list[dict[str, str]]]:
    by: dict[str, list[dict[str, str]]] = defaultdict(list)
    for r in rows:
        if (lr is None or r["lr"] == lr) and r[field] != "":
            by[r["seed"]].append(r)
    return by


# ---- figure 9 ----------------------------------------------------------------------------
def run_fig9(params: Fig9Settings, ctx: Any) -> dict[str, Any]:
    _run("fig9", params, ctx, [params.dqn.learning_rate], 0, ())
    return report_fig9(Path(ctx.run_dir))


def report_fig9(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    rows = _read(run_dir / "fig9_train.csv")
    by = _per_seed(rows, "loss_mean")
    series = [np.array([float(r["loss_mean"]) for r in sorted(v, key=lambda r: int(r["episode"]))])
              for v in by.values()]
    steps = np.array([int(r["last_train_step"]) for r in
                      sorted(next(iter(by.values())), key=lambda r: int(r["episode"]))])
    fig, ax = plt.subplots(figsize=(6, 4))
    _band(ax, steps, series, f"DQN loss (lr {rows[0]['lr']})", "C0")
    ax.set_xlabel("Training steps")
    ax.set_ylabel("Loss (Huber, per episode mean)")
    ax.set_yscale("log")
    ax.set_title(f"Fig. 9: DQN training loss ({len(series)} seeds, 95% CI)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "fig9.png", dpi=150)
    plt.close(fig)
    n = min(len(s) for s in series)
    k = max(n // 10, 1)
    summary = {"seeds": sorted(by), "episodes": n, "learning_rate": float(rows[0]["lr"]),
               "loss_first_10pct": _ci([float(s[:k].mean()) for s in series]),
               "loss_last_10pct": _ci([float(s[n - k:n].mean()) for s in series]),
               "loss_last_10pct_over_first": _ci([float(s[n - k:n].mean() / s[:k].mean())
                                                  for s in series])}
    (run_dir / "fig9_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# ---- figure 10 ---------------------------------------------------------------------------
def run_fig10(params: Fig10Settings, ctx: Any) -> dict[str, Any]:
    _run("fig10", params, ctx, params.learning_rates, params.eval_episodes,
         ("average", "edf", "edf_admit") if params.eval_episodes else ())
    return report_fig10(Path(ctx.run_dir))


def _heldout(rows: list[dict[str, str]], method: str, lr: str | None = None) -> dict[str, float]:
    """Per repetition seed: mean held-out reward of a method."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if r["method"] == method and (lr is None or r["lr"] == lr):
            by[r["seed"]].append(float(r["reward"]))
    return {k: float(np.mean(v)) for k, v in by.items()}


def _paired(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    keys = sorted(set(a) & set(b))
    return _ci([a[k] - b[k] for k in keys]) if keys else {}


def report_fig10(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    rows = _read(run_dir / "fig10_train.csv")
    evals = _read(run_dir / "fig10_eval.csv") if (run_dir / "fig10_eval.csv").exists() else []
    lrs = sorted({r["lr"] for r in rows}, key=float, reverse=True)
    fig, axes = plt.subplots(2, (len(lrs) + 1) // 2, figsize=(10, 6.5), sharex=True,
                             sharey=True, squeeze=False)
    summary: dict[str, Any] = {"learning_rates": {}, "observed": {}, "criteria": {
        "tail": "the last quarter of training episodes",
        "oscillation": "per seed, the standard deviation of episode reward over the tail",
        "heldout": "greedy policy on the repetition's held-out schedules"}}
    refs = {m: _heldout(evals, m, lrs[0]) for m in ("average", "edf", "edf_admit")} \
        if evals else {}
    for i, lr in enumerate(lrs):
        ax = axes.flat[i]
        by = _per_seed(rows, "reward", lr)
        series = [np.array([float(r["reward"]) for r in sorted(v, key=lambda r: int(r["episode"]))])
                  for v in by.values()]
        n = min(len(s) for s in series)
        _band(ax, np.arange(1, n + 1), series, f"lr = {lr}", f"C{i}")
        for j, (m, vals) in enumerate(refs.items()):
            if vals:
                mu = float(np.mean(list(vals.values())))
                ax.axhline(mu, color=f"C{6 + j}", lw=0.9, ls="--",
                           label=f"{LABELS[m]} (held-out)")
        ax.set_title(f"learning rate {lr}")
        ax.legend(fontsize=7, loc="lower right")
        tail = slice(n - max(n // 4, 1), n)
        dqn = _heldout(evals, "dqn", lr)
        summary["learning_rates"][lr] = {
            "seeds": sorted(by), "episodes": n,
            "tail_reward": _ci([float(s[tail].mean()) for s in series]),
            "first_quarter_reward": _ci([float(s[:max(n // 4, 1)].mean()) for s in series]),
            "oscillation": _ci([float(s[tail].std(ddof=1)) if len(s[tail]) > 1 else 0.0
                                for s in series]),
            "heldout_reward": _ci(list(dqn.values())) if dqn else {},
            **{f"heldout_minus_{m}": _paired(dqn, v) for m, v in refs.items()}}
    for ax in axes[-1]:
        ax.set_xlabel("Training episode")
    for ax in axes[:, 0]:
        ax.set_ylabel("Episode reward")
    for ax in list(axes.flat)[len(lrs):]:
        ax.set_visible(False)
    seeds = len(_per_seed(rows, "reward", lrs[0]))
    fig.suptitle(f"Fig. 10: reward during training by learning rate ({seeds} seeds, 95% CI)")
    fig.tight_layout()
    fig.savefig(run_dir / "fig10.png", dpi=150)
    plt.close(fig)
    summary["heldout_references"] = {m: _ci(list(v.values())) for m, v in refs.items() if v}
    lr_stats = summary["learning_rates"]
    small = [lr for lr in lrs if float(lr) <= 0.001]
    large = [lr for lr in lrs if float(lr) >= 0.01]
    if small and large:
        # paired by seed: a seed trains on the same schedules at every learning rate
        osc = {lr: {seed: float(np.array([float(r["reward"]) for r in sorted(
            v, key=lambda r: int(r["episode"]))])[-max(len(v) // 4, 2):].std(ddof=1))
            for seed, v in _per_seed(rows, "reward", lr).items()} for lr in lrs}
        common = sorted(set.intersection(*(set(o) for o in osc.values())))
        diff = _ci([float(np.mean([osc[lr][k] for lr in large])
                          - np.mean([osc[lr][k] for lr in small])) for k in common])
        held = {lr: _heldout(evals, "dqn", lr) for lr in lrs}
        summary["observed"] = {
            "oscillation_large_minus_small_lr": diff,
            "large_rates_oscillate_more": (diff["mean"] - diff["ci95"] > 0) if len(common) > 1
            else None,
            "oscillation_by_lr": {lr: lr_stats[lr]["oscillation"] for lr in lrs},
            "heldout_by_lr": {lr: lr_stats[lr]["heldout_reward"] for lr in lrs},
            "smallest_minus_largest_lr_heldout": _paired(held[min(lrs, key=float)],
                                                         held[max(lrs, key=float)]),
            "rule": "large_rates_oscillate_more: the 95% CI of the per-seed difference in "
                    "tail oscillation (mean over lr >= 0.01 minus mean over lr <= 0.001) "
                    "lies above 0"}
    (run_dir / "fig10_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


# ---- figure 11 ---------------------------------------------------------------------------
def run_fig11(params: Fig11Settings, ctx: Any) -> dict[str, Any]:
    _run("fig11", params, ctx, [params.dqn.learning_rate], params.eval_episodes,
         params.baselines)
    return report_fig11(Path(ctx.run_dir))


def report_fig11(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    stages = _read(run_dir / "fig11_stages.csv")
    evals = _read(run_dir / "fig11_eval.csv")
    methods = [m for m in LABELS if any(r["method"] == m for r in evals)]
    # per method, per repetition seed, per stage: mean over held-out schedules
    cum: dict[str, dict[str, dict[int, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    per_round: dict[int, int] = {}
    for r in stages:
        k = int(r["stage"])
        cum[r["method"]][r["seed"]][k].append(float(r["cumulative_reward"]))
        per_round[k] = int(r["slim_per_round"])
    ks = sorted(per_round)
    x = np.array([per_round[k] for k in ks], dtype=float)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ref = "average" if "average" in cum else methods[0]
    for i, m in enumerate(methods):
        series = {seed: np.array([np.mean(v[k]) for k in ks]) for seed, v in cum[m].items()}
        _band(ax, x, list(series.values()), LABELS[m], f"C{i}")
        if m not in ("cubic", "bbr"):  # the allocators, against Algorithm 1, paired by seed
            base = {seed: np.array([np.mean(v[k]) for k in ks]) for seed, v in cum[ref].items()}
            _band(ax2, x, [series[k] - base[k] for k in sorted(set(series) & set(base))],
                  LABELS[m], f"C{i}")
    n_seeds = len(cum[methods[0]])
    for a in (ax, ax2):
        a.set_xlabel("Slim flows per consensus round (multiples of 4 PBFT validators)")
        a.legend(fontsize=8)
    ax.set_ylabel("Cumulative reward")
    ax2.set_ylabel(f"Cumulative reward minus {LABELS[ref]}'s (same seed)")
    ax2.axhline(0, color="0.5", lw=0.8)
    ax.set_title(f"Fig. 11: reward as slim flows increase ({n_seeds} seeds, held-out, 95% CI)",
                 fontsize=10)
    ax2.set_title("The allocators against Average (Algorithm 1)", fontsize=10)
    fig.tight_layout()
    fig.savefig(run_dir / "fig11.png", dpi=150)
    plt.close(fig)
    totals = {m: _heldout(evals, m) for m in methods}
    table = []
    for m in methods:
        slim_missed = _heldout([{**r, "reward": r["slim_missed"]} for r in evals], m)
        row = {"method": m, **{f"reward_{k}": v for k, v in _ci(list(totals[m].values())).items()},
               "slim_missed_mean": float(np.mean(list(slim_missed.values())))}
        d = _paired(totals["dqn"], totals[m]) if m != "dqn" and "dqn" in totals else {}
        row.update({"dqn_minus_method_mean": d.get("mean", ""),
                    "dqn_minus_method_ci95": d.get("ci95", "")})
        table.append(row)
    _write_csv(run_dir / "fig11_summary.csv", table)
    seeds_doc = run_dir / "fig11_seeds.json"
    summary = {"methods": {r["method"]: r for r in table},
               "seeds": json.loads(seeds_doc.read_text()) if seeds_doc.exists() else None,
               "note": "reward over the whole held-out episode; dqn_minus_method is paired by "
                       "repetition seed (same held-out schedules)"}
    (run_dir / "fig11_summary.json").write_text(json.dumps(summary, indent=1))
    return summary
