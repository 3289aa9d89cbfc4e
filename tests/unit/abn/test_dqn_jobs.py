"""The DQN figure jobs (abn/jobs.py, abn/dqn_figures.py, abn/dqn_runs.py) on tiny
settings: registered, rows streamed, held-out seeds apart, figures redrawn from CSVs."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from abn.dqn_figures import (
    Fig9Settings,
    Fig10Settings,
    Fig11Settings,
    report_fig9,
    report_fig10,
    report_fig11,
    run_fig9,
    run_fig10,
    run_fig11,
)
from abn.dqn_runs import EVAL_BASE, TRAIN_BASE, CsvSink, eval_schedule_seeds, train_schedule_seeds
from testbed import jobs

TINY: dict[str, Any] = {"env": {"episode_slots": 30}, "dqn": {"learn_start": 40},
                        "workers": 1}


def ctx(run_dir: Path, seed: int = 1) -> jobs.JobContext:
    seen: list[float] = []
    c = jobs.JobContext(run_dir=run_dir, seed=seed, progress=lambda f, m: seen.append(f))
    c.seen = seen  # type: ignore[attr-defined]
    return c


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_jobs_are_registered_with_typed_settings() -> None:
    for name, model in (("abn.fig9", Fig9Settings), ("abn.fig10", Fig10Settings),
                        ("abn.fig11", Fig11Settings)):
        spec = jobs.get(name)
        assert jobs.resolve(spec.params) is model and spec.report
    assert Fig10Settings().learning_rates == (0.1, 0.01, 0.001, 0.0001)
    with pytest.raises(ValueError):
        Fig11Settings(seeds=0)


def test_train_and_heldout_schedules_never_meet() -> None:
    train = {s for r in range(0, 800, 97) for s in train_schedule_seeds(r, 1000)}
    held = {s for r in range(0, 800, 97) for s in eval_schedule_seeds(r, 50)}
    assert not train & held
    assert min(train) >= TRAIN_BASE and min(held) >= EVAL_BASE > max(train)
    with pytest.raises(ValueError, match="overlap"):
        train_schedule_seeds(800, 1)


def test_sink_appends_and_flushes_with_one_header(tmp_path: Path) -> None:
    sink = CsvSink(tmp_path)
    sink.write("x.csv", [{"a": 1, "b": 2}])
    assert rows(tmp_path / "x.csv") == [{"a": "1", "b": "2"}]  # readable before close
    sink.close()
    sink = CsvSink(tmp_path)  # a resumed writer keeps the header it found
    sink.write("x.csv", [{"a": 3, "b": 4}])
    sink.close()
    assert [r["a"] for r in rows(tmp_path / "x.csv")] == ["1", "3"]


def test_fig11_streams_rows_evaluates_heldout_and_redraws_from_csvs(tmp_path: Path) -> None:
    c = ctx(tmp_path)
    summary = run_fig11(Fig11Settings(seeds=2, episodes=2, eval_episodes=1, **TINY), c)
    train = rows(tmp_path / "fig11_train.csv")
    assert [(r["seed"], r["episode"], r["split"]) for r in train] == \
        [("1", "1", "train"), ("1", "2", "train"), ("2", "1", "train"), ("2", "2", "train")]
    evals = rows(tmp_path / "fig11_eval.csv")
    assert {r["split"] for r in evals} == {"heldout"}
    assert {r["method"] for r in evals} == {"dqn", "average", "edf", "edf_admit", "srpt",
                                            "cubic", "bbr"}
    assert not {r["schedule_seed"] for r in evals} & {r["schedule_seed"] for r in train}
    assert c.seen[-1] == 1.0  # type: ignore[attr-defined]
    assert (tmp_path / "policies" / "lr0.001_seed1" / "weights.npz").exists()
    assert set(summary["methods"]) >= {"dqn", "cubic", "bbr", "average", "edf"}
    assert summary["seeds"]["repetition_seeds"] == [1, 2]
    # the report reads the CSVs only: change one, and the figure data follow
    png = tmp_path / "fig11.png"
    png.unlink()
    stages = rows(tmp_path / "fig11_stages.csv")
    for r in evals:
        if r["method"] == "bbr":
            r["reward"] = "12345"
    with (tmp_path / "fig11_eval.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(evals[0]))
        w.writeheader()
        w.writerows(evals)
    again = report_fig11(tmp_path)
    assert png.exists() and len(stages) == len(rows(tmp_path / "fig11_stages.csv"))
    assert again["methods"]["bbr"]["reward_mean"] == 12345
    dqn = again["methods"]["dqn"]["reward_mean"]
    assert again["methods"]["bbr"]["dqn_minus_method_mean"] == pytest.approx(dqn - 12345)


def test_fig9_and_fig10_write_their_figures_and_summaries(tmp_path: Path) -> None:
    s10 = run_fig10(Fig10Settings(seeds=2, episodes=3, learning_rates=(0.01, 0.001),
                                  eval_episodes=1, **TINY), ctx(tmp_path / "f10"))
    assert set(s10["learning_rates"]) == {"0.01", "0.001"}
    assert s10["learning_rates"]["0.001"]["episodes"] == 3
    assert "observed" in s10 and "heldout_minus_average" in s10["learning_rates"]["0.01"]
    (tmp_path / "f10" / "fig10.png").unlink()
    report_fig10(tmp_path / "f10")
    assert (tmp_path / "f10" / "fig10.png").exists()
    s9 = run_fig9(Fig9Settings(seeds=2, episodes=3, **TINY), ctx(tmp_path / "f9"))
    assert s9["loss_first_10pct"]["n"] == 2
    train = rows(tmp_path / "f9" / "fig9_train.csv")
    steps = [int(r["last_train_step"]) for r in train if r["seed"] == "1" and r["loss_mean"]]
    assert steps == sorted(steps) and steps[0] > 0
    (tmp_path / "f9" / "fig9.png").unlink()
    assert report_fig9(tmp_path / "f9") == json.loads(
        (tmp_path / "f9" / "fig9_summary.json").read_text())
    assert (tmp_path / "f9" / "fig9.png").exists()


@pytest.mark.slow
def test_two_workers_give_the_same_rows_as_one(tmp_path: Path) -> None:
    """Workers are spawned processes that stream rows back; the parent writes them.
    Seeded training is the same wherever it runs."""
    params = {**TINY, "seeds": 2, "episodes": 2}
    run_fig9(Fig9Settings(**params), ctx(tmp_path / "one"))
    run_fig9(Fig9Settings(**{**params, "workers": 2}), ctx(tmp_path / "two"))

    def key(r: dict[str, str]) -> tuple[str, ...]:
        return (r["seed"], r["episode"], r["reward"], r["loss_mean"])

    one = sorted(map(key, rows(tmp_path / "one" / "fig9_train.csv")))
    assert one == sorted(map(key, rows(tmp_path / "two" / "fig9_train.csv")))
