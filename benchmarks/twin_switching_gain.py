"""How much switching protocols can gain on a workload: fixed protocols vs the oracle.

For each seed the workload's scenario is run with always-PBFT, always-BigFoot and the
greedy hindsight oracle (twin.oracle: per step the best protocol knowing the next
step's true future; not the optimum over switch sequences). Prints per-seed latencies
and switching gain (best fixed - oracle) / best fixed, then the mean gain with its 95%
t interval and the paired difference best fixed - oracle with its interval.

    .venv/bin/python benchmarks/twin_switching_gain.py [--workload wl3] [--seeds 10]
        [--first-seed 1] [--json out.json]
Simulation only (no root); one episode is three simulated passes plus the oracle's
what-if clones, about a second at 5 nodes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

from testbed.stats import mean_ci, paired_diff  # noqa: E402
from twin.env import EnvSettings  # noqa: E402
from twin.experiment import fixed, run_episode  # noqa: E402
from twin.model import PROTOCOL_NAMES  # noqa: E402
from twin.oracle import oracle_episode, switching_gain  # noqa: E402
from twin.scenarios import load_workload  # noqa: E402


def seed_row(workload: str, seed: int, settings: EnvSettings) -> dict[str, Any]:
    """Fixed protocols and the oracle on one seed's scenario."""
    sc = load_workload(workload).scenario(seed)
    t = time.perf_counter()
    fixed_lat = {p: run_episode(sc, settings, fixed(a)).latency
                 for a, p in enumerate(PROTOCOL_NAMES)}
    fixed_s = (time.perf_counter() - t) / len(PROTOCOL_NAMES)
    res = oracle_episode(sc, settings)
    switches = sum(a != b for a, b in zip(res.actions, res.actions[1:], strict=False))
    return {"seed": seed, **fixed_lat, "oracle": res.latency,
            "best_fixed": min(fixed_lat.values()),
            "gain": switching_gain(res.latency, list(fixed_lat.values())),
            "pbft_steps": res.actions.count(PROTOCOL_NAMES.index("pbft")),
            "switches": switches, "outages": len(sc.outages),
            "fixed_s": fixed_s, "oracle_s": res.seconds}


def summary(rows: list[dict[str, Any]]) -> list[str]:
    """Mean gain with its 95% CI, per-protocol means, and the paired oracle advantage."""
    g, g_ci = mean_ci([r["gain"] for r in rows])
    lines = [f"switching gain: {100 * g:.1f}% +- {100 * g_ci:.1f}% (mean, 95% CI, "
             f"n={len(rows)})"]
    for name in (*PROTOCOL_NAMES, "best_fixed", "oracle"):
        m, ci = mean_ci([r[name] for r in rows])
        lines.append(f"  {name:10s} latency {m:7.3f} +- {ci:.3f} s")
    d, d_ci, sig = paired_diff([r["best_fixed"] for r in rows], [r["oracle"] for r in rows])
    lines.append(f"best fixed - oracle: {d:.3f} +- {d_ci:.3f} s (paired 95% CI"
                 f"{', excludes 0' if sig else ', includes 0'})")
    lines.append(f"seconds per episode: fixed {mean_ci([r['fixed_s'] for r in rows])[0]:.2f}"
                 f", oracle {mean_ci([r['oracle_s'] for r in rows])[0]:.2f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="wl3", help="twin/workloads/<name>.yaml or a path")
    ap.add_argument("--seeds", type=int, default=10, help="how many seeds")
    ap.add_argument("--first-seed", type=int, default=1, help="the first seed")
    common.add_json_option(ap)
    args = ap.parse_args()
    settings = EnvSettings()
    print(f"{'seed':>5} {'pbft':>8} {'bigfoot':>8} {'oracle':>8} {'gain':>7} "
          f"{'pbft steps':>10} {'switches':>8} {'outages':>7} {'oracle s':>8}")
    rows = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        r = seed_row(args.workload, seed, settings)
        rows.append(r)
        print(f"{seed:5d} {r['pbft']:8.3f} {r['bigfoot']:8.3f} {r['oracle']:8.3f} "
              f"{100 * r['gain']:6.1f}% {r['pbft_steps']:10d} {r['switches']:8d} "
              f"{r['outages']:7d} {r['oracle_s']:8.2f}", flush=True)
    print("\n".join(summary(rows)))
    common.write_json(args.json, rows)


if __name__ == "__main__":
    main()
