"""Figures from a synthetic run folder: an unreliable run's figures carry their caveat."""

import csv
import json

import matplotlib.pyplot as plt
import pytest

from testbed import analysis, plots
from testbed.chain import LATENCY_CSV

PERIODS = [
    {"start_s": 2.0, "end_s": 4.5, "kind": "host_cpu", "subject": "host", "detail": "x"},
    {"start_s": 6.0, "end_s": 7.0, "kind": "late_release", "subject": "path:mb>h2",
     "detail": "y"},
]
UNRELIABLE = {"status": "unreliable", "reasons": ["host CPU was saturated"],
              "periods": PERIODS, "summary": {}}


def manifest(health=None):
    man = {"experiment": {"name": "synthetic"}, "mode": "emulation", "status": "ok",
           "events": [{"at": 5.0, "actual_s": 5.01, "action": "set_link"}]}
    if health is not None:
        man["health"] = health
        man["status"] = "ok" if health["status"] == "ok" else "unreliable"
    return man


def write_run(run_dir, man):
    with open(run_dir / analysis.THROUGHPUT_CSV, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["capture", "flow", "t_s", "ip_bytes", "payload_bytes", "packets",
                    "goodput_mbps"])
        for i in range(100):
            w.writerow(["mb:mb-eth1", "cubic", f"{i / 10:.1f}", 1000, 900, 1, 50.0])
    with open(run_dir / LATENCY_CSV, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["client", "tx_id", "submit_s", "commit_s", "latency_s", "protocol"])
        for i in range(50):
            w.writerow(["c", i, f"{i / 5:.2f}", f"{i / 5 + 0.02:.2f}", "0.02", "pbft"])
    (run_dir / "manifest.json").write_text(json.dumps(man))


def test_mark_unreliable_draws_a_span_per_period_and_the_warning():
    fig, ax = plt.subplots()
    try:
        assert plots.mark_unreliable(ax, manifest(UNRELIABLE)) == 2
        assert len(ax.patches) == 2
        xs = sorted(tuple(round(x, 3) for x in p.get_bbox().intervalx) for p in ax.patches)
        assert xs == [(2.0, 4.5), (6.0, 7.0)]
        assert [t.get_text() for t in ax.texts] == [plots.UNRELIABLE_TEXT]
        assert ax.texts[0].get_color() == "red"
    finally:
        plt.close(fig)


@pytest.mark.parametrize("man", [manifest(), manifest({"status": "ok", "reasons": [],
                                                       "periods": [], "summary": {}})])
def test_mark_unreliable_leaves_trusted_runs_alone(man):
    fig, ax = plt.subplots()
    try:
        assert plots.mark_unreliable(ax, man) == 0
        assert not ax.patches and not ax.texts
    finally:
        plt.close(fig)


def test_figures_of_an_unreliable_run_are_marked(tmp_path, monkeypatch):
    man = manifest(UNRELIABLE)
    write_run(tmp_path, man)
    drawn = []
    real = plots.mark_unreliable

    def spy(ax, m):
        n = real(ax, m)
        drawn.append((n, [t.get_text() for t in ax.texts]))
        return n

    monkeypatch.setattr(plots, "mark_unreliable", spy)
    out = plots.throughput_figure(tmp_path, man)
    assert out is not None and out.stat().st_size > 0
    out = plots.chain_latency_figure(tmp_path, man)
    assert out is not None and out.stat().st_size > 0
    assert len(drawn) == 2
    for n, texts in drawn:
        assert n == 2 and plots.UNRELIABLE_TEXT in texts
