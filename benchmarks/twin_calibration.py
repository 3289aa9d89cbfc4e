"""How well the digital twin knows the chain it watches (issue 19): estimation errors
and predicted vs measured step latency, the physical chain and the twin kept apart.

Per workload and seed the physical chain runs one episode per policy (always-PBFT,
always-BigFoot, and alternating every step so that switches are covered); every step
TS the twin ingests the sensor feed (twin.digital) and predicts the step latency of
the protocol about to run. The harness compares with the truth (the twin never sees
it):

- estimation, per step: link speed MAPE over the nodes that are up (down nodes keep
  their last estimate, which is not evidence-based), latency mean absolute error in
  ms, TPS and transaction size relative errors, up/down accuracy per node, backlog;
- prediction: MAPE of the twin's predicted step latency against the measured one,
  split by steps with every node up at the decision time, with a node down, and by
  whether the world changed during the step (a link/workload interval boundary or an
  outage starting or ending), which no twin can foresee from the present;
- cost: seconds per episode without records, with records, with the twin fed every
  step, and with per-step prediction.

    .venv/bin/python benchmarks/twin_calibration.py [--workloads wl1,wl2]
        [--seeds 1-5,101-105] [--present replay|fresh] [--scenarios 1]
        [--no-failure-draws] [--up-heights 2] [--link-heights 5] [--no-contention]
        [--no-cost] [--json out.json]
Simulation only (no root); about 0.5 s per episode with prediction at 5 nodes, 40 s for
the default run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

from twin.digital import TwinSettings  # noqa: E402
from twin.env import ChainTwinEnv, EnvSettings  # noqa: E402
from twin.experiment import DecisionContext, Policy, StepRecord, fixed, run_episode  # noqa: E402
from twin.model import ModelConfig  # noqa: E402
from twin.scenarios import Scenario, load_workload  # noqa: E402


def parse_seeds(text: str) -> list[int]:
    """'1-5,101-105' -> [1..5, 101..105]."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def _flip(ctx: DecisionContext, key: tuple[int, ...]) -> int:
    """Each step the other protocol than the one in force."""
    return 1 - ctx.protocols.index(ctx.twin.protocol) if len(ctx.protocols) == 2 else 0


def world_changes(sc: Scenario, t0: float, t1: float) -> bool:
    """Does the truth change in [t0, t1): an interval boundary or an outage edge? (An
    interval starting at t0 itself is news the twin cannot have had at t0.)"""
    edges = [iv.start for iv in sc.intervals] + [x for o in sc.outages for x in (o.start, o.end)]
    return any(t0 <= x < t1 for x in edges if x > 0)


def interval_starts_at(sc: Scenario, t0: float) -> bool:
    return any(abs(iv.start - t0) < 1e-9 for iv in sc.intervals if iv.start > 0)


def step_errors(st: StepRecord) -> dict[str, Any]:
    e, t = st.estimate, st.truth
    up = [i for i, u in enumerate(t.up) if u]
    return {
        "speed_ape": [abs(e.link_mbps[i] - t.link_mbps[i]) / t.link_mbps[i] for i in up],
        "latency_ae_ms": [abs(e.latency_ms[i] - t.latency_ms[i]) for i in range(len(t.up))],
        "tps_re": abs(e.tps - t.tps) / t.tps if t.tps else 0.0,
        "size_re": abs(e.tx_size - t.tx_size) / t.tx_size if t.tx_size else 0.0,
        "up_ok": [a == b for a, b in zip(e.up, t.up, strict=True)],
        "pending_ae": abs(e.pending_txs - t.pending_txs),
        "first": st.time == 0.0,
    }


def episode_rows(workload: str, seed: int, policy_name: str, policy: Policy,
                 settings: EnvSettings, twin: TwinSettings, scenarios: int) -> list[dict[str, Any]]:
    sc = load_workload(workload).scenario(seed)
    res = run_episode(sc, settings, policy, predict=True, twin=twin,
                      predict_scenarios=scenarios, predict_seed=seed)
    rows = []
    for st in res.steps:
        t1 = min(st.time + settings.step_seconds, sc.duration)
        assert st.predicted is not None
        rows.append({"workload": workload, "seed": seed, "policy": policy_name,
                     "time": st.time, "protocol": st.protocol, "measured": st.latency,
                     "predicted": st.predicted, "all_up": st.all_up,
                     "changes": world_changes(sc, st.time, t1),
                     "new_interval": interval_starts_at(sc, st.time), **step_errors(st)})
    return rows


def ape(rows: list[dict[str, Any]]) -> list[float]:
    return [abs(r["predicted"] - r["measured"]) / r["measured"] for r in rows if r["measured"] > 0]


def pct(xs: list[float]) -> str:
    if not xs:
        return "     -"
    return f"{100 * statistics.mean(xs):5.1f}%"


def estimation_lines(est: list[dict[str, Any]], label: str) -> list[str]:
    def flat(key: str) -> list[Any]:
        return [x for r in est for x in r[key]]
    speed = flat("speed_ape")
    return [
        f"estimation, {label} ({len(est)} steps):",
        f"  link speed MAPE (up nodes)    {pct(speed)}   median "
        f"{100 * statistics.median(speed):.2f}%  within 5%: "
        f"{100 * statistics.mean([x <= 0.05 for x in speed]):.0f}%",
        f"  latency abs error             {statistics.mean(flat('latency_ae_ms')):6.2f} ms "
        f"(max {max(flat('latency_ae_ms')):.2f})",
        f"  TPS relative error            {pct([r['tps_re'] for r in est])}",
        f"  tx size relative error        {pct([r['size_re'] for r in est])}",
        f"  up/down accuracy per node     {pct([float(x) for x in flat('up_ok')])}",
        f"  backlog abs error (txs)       {statistics.mean([r['pending_ae'] for r in est]):.1f}",
    ]


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Estimation errors and prediction MAPE by group (t = 0 left out: the twin has
    seen nothing yet and predicts from its priors)."""
    rows = [r for r in rows if not r["first"]]
    lines = estimation_lines(rows, "every step t > 0")
    lines += estimation_lines([r for r in rows if not r["new_interval"]],
                              "steps with no interval starting at t0")
    lines.append("prediction MAPE (predicted vs measured step latency), t > 0:")
    up = [r for r in rows if r["all_up"]]
    down = [r for r in rows if not r["all_up"]]
    groups = [
        ("all up at t0", up),
        ("  world unchanged in step", [r for r in up if not r["changes"]]),
        ("  world changed in step", [r for r in up if r["changes"]]),
        ("node down at t0", down),
        ("  world unchanged in step", [r for r in down if not r["changes"]]),
        ("  world changed in step", [r for r in down if r["changes"]]),
        ("all steps", rows),
    ]
    for name, rs in groups:
        a = ape(rs)
        med = f"{100 * statistics.median(a):5.1f}%" if a else "    -"
        lines.append(f"  {name:28s} n={len(rs):4d}  MAPE {pct(a)}  median {med}")
    for p in sorted({r["protocol"] for r in rows}):
        a = ape([r for r in up if r["protocol"] == p])
        lines.append(f"  all up, {p:20s} MAPE {pct(a)}")
    return lines


def episode_costs(workload: str, seeds: list[int], settings: EnvSettings,
                  twin: TwinSettings) -> list[str]:
    """Wall seconds per episode (always-BigFoot): env alone, records on, twin, predict."""
    def env_only(records: str) -> float:
        t = time.perf_counter()
        for seed in seeds:
            s = settings.model_copy(update={"model": settings.model.model_copy(
                update={"records": records})})
            env = ChainTwinEnv(load_workload(workload).scenario(seed), s)
            env.reset(seed=seed)
            done = False
            while not done:
                done = env.step(1)[2]
        return (time.perf_counter() - t) / len(seeds)

    def episodes(predict: bool) -> tuple[float, float, float]:
        t = time.perf_counter()
        twin_s = pred_s = 0.0
        for seed in seeds:
            r = run_episode(load_workload(workload).scenario(seed), settings, fixed(1),
                            predict=predict, twin=twin)
            twin_s += r.twin_seconds
            pred_s += r.predict_seconds
        n = len(seeds)
        return (time.perf_counter() - t) / n, twin_s / n, pred_s / n

    plain, recs = env_only("none"), env_only("all")
    full, twin_s, _ = episodes(False)
    pred, _, pred_s = episodes(True)
    return [f"cost per episode on {workload} (s, mean of {len(seeds)} seeds): env alone "
            f"{plain:.3f}, records on {recs:.3f}, + twin fed every step {full:.3f} "
            f"(calibration {twin_s:.3f}), + prediction {pred:.3f} (predict {pred_s:.3f})"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", default="wl1,wl2")
    ap.add_argument("--seeds", default="1-5,101-105", help="e.g. 1-5,101-105")
    ap.add_argument("--present", choices=("replay", "fresh"), default="replay",
                    help="how model_now fills in the unobserved in-flight state")
    ap.add_argument("--scenarios", type=int, default=1, help="futures per prediction")
    ap.add_argument("--link-heights", type=int, default=TwinSettings().link_heights)
    ap.add_argument("--up-heights", type=int, default=TwinSettings().up_heights)
    ap.add_argument("--no-contention", action="store_true",
                    help="physical chain (and the twin's config) without sender contention")
    ap.add_argument("--no-cost", action="store_true", help="skip the cost measurement")
    ap.add_argument("--no-failure-draws", action="store_true",
                    help="predict under futures without new failures (down nodes still "
                         "recover at drawn times)")
    common.add_json_option(ap)
    args = ap.parse_args()
    settings = EnvSettings(model=ModelConfig(contention=not args.no_contention))
    seeds = parse_seeds(args.seeds)
    policies: list[tuple[str, Policy]] = [("pbft", fixed(0)), ("bigfoot", fixed(1)),
                                          ("alternate", _flip)]
    all_rows: list[dict[str, Any]] = []
    for wl in args.workloads.split(","):
        twin = TwinSettings(generator=load_workload(wl).generator, present=args.present,
                            link_heights=args.link_heights, up_heights=args.up_heights,
                            new_failures=not args.no_failure_draws)
        rows: list[dict[str, Any]] = []
        t = time.perf_counter()
        for seed in seeds:
            for name, pol in policies:
                rows += episode_rows(wl, seed, name, pol, settings, twin, args.scenarios)
        print(f"== {wl}: seeds {args.seeds}, policies {[p for p, _ in policies]}, present="
              f"{args.present}, {time.perf_counter() - t:.1f} s")
        print("\n".join(summary(rows)))
        if not args.no_cost:
            print("\n".join(episode_costs(wl, seeds[:5], settings, twin)))
        all_rows += rows
    if len(args.workloads.split(",")) > 1:
        print("== all workloads")
        print("\n".join(summary(all_rows)))
    common.write_json(args.json, all_rows)


if __name__ == "__main__":
    main()
