"""The shim's `dqn` allocator, live (issue 15): the shipped abn_dqn_live experiment,
shortened. The trained policy (experiments/policies/abn_live) picks a template every
period, the rates it sets never exceed C_r, and the slim transfers' completions reach
slim_summary.csv."""

from __future__ import annotations

import csv
import json

import pytest

from abn import sender
from abn.dqn_baselines import ACTION_NAMES

pytestmark = pytest.mark.skipif(not sender.built()[0], reason=sender.built()[1])


def test_the_dqn_allocator_sets_the_rates_live(run_shipped) -> None:
    _, run_dir, _ = run_shipped("abn_dqn_live.yaml", [
        "duration=14", "processes.fat.duration=12", "processes.slim.count=14"])
    recs = [json.loads(x) for x in (run_dir / "abn" / "mb2.jsonl").read_text().splitlines()]
    busy = [r for r in recs if r["flows"]]
    assert len(busy) > 60, f"{len(busy)} periods with flows in a 14 s run"
    for r in busy:  # rates are rounded to 1 bit/s per flow
        assert sum(f["rate_bps"] for f in r["flows"]) <= r["C_r_bps"] + len(r["flows"]), r
    chosen = [r["action"] for r in busy]
    assert all(a is not None and 0 <= a < len(ACTION_NAMES) for a in chosen), set(chosen)
    assert max(r["declared"] for r in recs) >= 1  # the slim client told the shim its flows
    with (run_dir / "slim_summary.csv").open() as fh:
        (row,) = list(csv.DictReader(fh))
    assert int(row["transfers"]) == 4 * 14 and int(row["completed"]) >= 0.9 * 4 * 14, row
