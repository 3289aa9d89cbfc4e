"""Registers the ABN paper's DQN simulation jobs (Figures 9-11; `mode: simulation`).

Entries are strings resolved on use, so `chaintwin doctor` and emulation runs import
neither these modules nor TensorFlow (which only the training workers import).
"""

from __future__ import annotations

from testbed.jobs import JobSpec, register

register("abn.fig9", JobSpec(
    params="abn.dqn_figures:Fig9Settings", run="abn.dqn_figures:run_fig9",
    report="abn.dqn_figures:report_fig9",
    summary="ABN paper fig. 9: DQN training loss over train steps"))
register("abn.fig10", JobSpec(
    params="abn.dqn_figures:Fig10Settings", run="abn.dqn_figures:run_fig10",
    report="abn.dqn_figures:report_fig10",
    summary="ABN paper fig. 10: reward during DQN training for learning rates 0.1 .. 0.0001"))
register("abn.fig11", JobSpec(
    params="abn.dqn_figures:Fig11Settings", run="abn.dqn_figures:run_fig11",
    report="abn.dqn_figures:report_fig11",
    summary="ABN paper fig. 11: cumulative reward as slim flows grow, DQN vs Cubic-like, "
            "BBR-like, average and EDF on held-out schedules"))
