"""Registers the twin's simulation jobs (`mode: simulation` experiments)."""

from __future__ import annotations

from testbed.jobs import JobSpec, register

register("twin.fig4a", JobSpec(
    params="twin.figures:Fig4aSettings", run="twin.figures:run_fig4a",
    report="twin.figures:report_fig4a",
    summary="Twin paper fig. 4a: Q-agent training on WL1 vs always-PBFT and always-BigFoot"))
register("twin.fig4b", JobSpec(
    params="twin.figures:Fig4bSettings", run="twin.figures:run_fig4b",
    report="twin.figures:report_fig4b",
    summary="Twin paper fig. 4b: agent, agent+, PBFT, BigFoot (and what-if) on drifted WL2"))
register("twin.fig5", JobSpec(
    params="twin.figures:Fig5Settings", run="twin.figures:run_fig5",
    report="twin.figures:report_fig5",
    summary="Twin paper fig. 5: decision runtime of what-if optimisation vs agent+ on WL2"))
register("twin.switching", JobSpec(
    params="twin.figures:SwitchingSettings", run="twin.figures:run_switching",
    report="twin.figures:report_switching",
    summary="Twin switching evaluation: agent, agent+, what-if, oracle and the fixed "
            "protocols on held-out scenarios of a workload where the best protocol changes"))
