"""Slim flows against fat background: one run's summary, and schemes compared over seeds.

One run (any experiment with a `slim_client` or a chain) gets `slim_summary.csv`: per
slim client, transfers, completion p50/p95/p99 (ms; a transfer that never completed
counts as infinitely late), deadline misses, and the fat flows' throughput at their
receivers (iperf3's server-side bytes, Mbit/s); per chain client the same of its
transactions (latency submit -> commit, uncommitted ones as missed). `slim_cdf.png`
draws the completion times against the deadline.

Across runs, `python -m testbed.slim_compare RUN...` groups runs by their variant (the
scheme), pairs them by seed, and gives each metric's mean and 95% CI per scheme and
each scheme's paired difference from the reference scheme (significant only if the
CI excludes 0). With `--experiment FILE --seeds 1,2,3` it first runs every scheme the
file's header lists (SCHEMES below) for every seed, one run at a time.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SUMMARY_CSV = "slim_summary.csv"
CDF_PNG = "slim_cdf.png"
FIELDS = ["variant", "seed", "client", "transfers", "completed", "p50_ms", "p95_ms", "p99_ms",
          "missed", "miss_pct", "deadline_ms", "fat_mbps"]
METRICS = ("p50_ms", "p95_ms", "miss_pct", "fat_mbps")

SCHEMES: dict[str, list[str]] = {
    "cubic": ["variant=cubic", "processes.fat.congestion=cubic",
              "processes.slim.congestion=cubic", "processes.slim.declare=null", "abn.mb2=null"],
    "bbr": ["variant=bbr", "processes.fat.congestion=bbr", "processes.slim.congestion=bbr",
            "processes.slim.declare=null", "abn.mb2=null"],
    "abn-average": ["variant=abn-average", "abn.mb2.allocator=average", "abn.mb2.policy=null"],
    "abn-dqn": ["variant=abn-dqn"],
}
"""`--set` overrides that turn experiments/abn_dqn_live.yaml into each scheme."""

CHAIN_SCHEMES: dict[str, list[str]] = {
    "cubic": ["variant=cubic", "processes.fat.congestion=cubic", "chain.congestion=cubic",
              "abn.mb2=null"],
    "bbr": ["variant=bbr", "processes.fat.congestion=bbr", "chain.congestion=bbr",
            "abn.mb2=null"],
    "abn-average": SCHEMES["abn-average"],
    "abn-dqn": SCHEMES["abn-dqn"],
}
"""The same for experiments/abn_dqn_chain.yaml (the validators are the slim traffic)."""


def schemes_for(experiment: Path) -> dict[str, list[str]]:
    """The scheme overrides of a shipped comparison experiment (by its file name)."""
    return CHAIN_SCHEMES if Path(experiment).stem == "abn_dqn_chain" else SCHEMES


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile; inf stays inf (an uncompleted transfer)."""
    if not sorted_values:
        return math.nan
    pos = q * (len(sorted_values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    a, b = sorted_values[lo], sorted_values[hi]
    if math.isinf(a) or math.isinf(b):
        return math.inf if (pos > lo and math.isinf(b)) or math.isinf(a) else a
    return a + (b - a) * (pos - lo)


def read_transfers(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def completions_ms(rows: list[dict[str, str]]) -> list[float]:
    return sorted(float(r["completion_ms"]) if r.get("completion_ms") else math.inf
                  for r in rows)


def fat_mbps(run_dir: Path, manifest: dict[str, Any]) -> float | None:
    """Receiver-side throughput of all iperf3 clients of the run (Mbit/s), summed."""
    total, seen = 0.0, False
    for p in manifest["experiment"].get("processes", []):
        if p["kind"] != "iperf3_client":
            continue
        path = run_dir / "logs" / f"{p['name']}.json"
        try:
            end = json.loads(path.read_text())["end"]
            total += end["sum_received"]["bits_per_second"] / 1e6
            seen = True
        except (OSError, ValueError, KeyError):
            continue
    return total if seen else None


def summarise(run_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    exp = manifest["experiment"]
    fat = fat_mbps(run_dir, manifest)
    out = []
    for p in exp.get("processes", []):
        if p["kind"] != "slim_client":
            continue
        path = run_dir / f"slim_{p['name']}.csv"
        if not path.exists():
            continue
        rows = read_transfers(path)
        missed = sum(1 for r in rows if r.get("met") != "1")
        out.append(_row(exp, p["name"], completions_ms(rows), missed, p["deadline"] * 1e3,
                        fat))
    out += _chain_rows(run_dir, manifest, fat)
    return out


def _row(exp: dict[str, Any], client: str, times: list[float], missed: int,
         deadline_ms: float | str, fat: float | None) -> dict[str, Any]:
    """One client's summary row from its sorted completion times (ms; inf: never)."""
    return {
        "variant": exp.get("variant", "default"), "seed": exp.get("seed"),
        "client": client, "transfers": len(times),
        "completed": sum(1 for t in times if math.isfinite(t)),
        "p50_ms": round(_quantile(times, 0.5), 3), "p95_ms": round(_quantile(times, 0.95), 3),
        "p99_ms": round(_quantile(times, 0.99), 3), "missed": missed,
        "miss_pct": round(100 * missed / len(times), 3) if times else math.nan,
        "deadline_ms": deadline_ms, "fat_mbps": "" if fat is None else round(fat, 3)}


def _chain_rows(run_dir: Path, manifest: dict[str, Any], fat: float | None) -> list[dict[str, Any]]:
    """Per chain client: its transactions as 'transfers' (latency submit -> commit; a
    transaction never committed counts as infinitely late and as missed)."""
    from testbed.chain import LATENCY_CSV

    path = run_dir / LATENCY_CSV
    if not path.exists():
        return []
    by: dict[str, list[float]] = {}
    for r in read_transfers(path):
        lat = float(r["latency_s"]) * 1e3 if r.get("latency_s") else math.inf
        by.setdefault(r["client"], []).append(lat)
    return [_row(manifest["experiment"], client, sorted(lats),
                 sum(1 for t in lats if math.isinf(t)), "", fat)
            for client, lats in sorted(by.items())]


def figure(run_dir: Path, manifest: dict[str, Any]) -> Path | None:
    from testbed.plots import plt

    exp = manifest["experiment"]
    clients = [p for p in exp.get("processes", []) if p["kind"] == "slim_client"
               and (run_dir / f"slim_{p['name']}.csv").exists()]
    if not clients:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for p in clients:
        times = [t for t in completions_ms(read_transfers(run_dir / f"slim_{p['name']}.csv"))]
        n = len(times)
        finite = [t for t in times if math.isfinite(t)]
        ax.step(finite, [(i + 1) / n for i in range(len(finite))], where="post",
                label=f"{p['name']} ({len(finite)} of {n} completed)")
        ax.axvline(p["deadline"] * 1e3, color="grey", ls="--", lw=1)
    ax.set_xlabel("slim transfer completion time (ms); dashed: deadline")
    ax.set_ylabel("fraction of transfers")
    ax.set_title(f"{exp['name']} / {exp.get('variant', 'default')} / seed {exp.get('seed')}")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out = run_dir / CDF_PNG
    fig.savefig(out, dpi=150)
    plt.close(fig)
    return out


def analyse(run_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """The run's slim summary (if it has slim clients) and its figure."""
    rows = summarise(run_dir, manifest)
    if not rows:
        return []
    with (run_dir / SUMMARY_CSV).open("w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS)
        w.writeheader()
        w.writerows(rows)
    fig = figure(run_dir, manifest)
    return [run_dir / SUMMARY_CSV] + ([fig] if fig is not None else [])


# ------------------------------------------------------------------ across runs

def aggregate(run_dirs: Sequence[Path], reference: str = "abn-dqn") -> dict[str, Any]:
    """Per scheme, each metric's mean and 95% CI over seeds; per other scheme, the
    paired (same seed) difference reference - scheme with its CI."""
    from testbed.stats import mean_ci

    rows: list[dict[str, str]] = []
    for d in run_dirs:
        path = d / SUMMARY_CSV
        if path.exists():
            rows += list(csv.DictReader(path.open()))
    several = len({r["client"] for r in rows}) > 1  # then a scheme is "variant client"
    name_of = (lambda r: f"{r['variant']} {r['client']}") if several else (  # noqa: E731
        lambda r: r["variant"])
    by: dict[str, dict[int, dict[str, float]]] = {}
    partner: dict[str, str] = {}
    for r in rows:
        vals = {m: float(r[m]) if r[m] not in ("", None) else math.nan for m in METRICS}
        by.setdefault(name_of(r), {})[int(r["seed"])] = vals
        partner[name_of(r)] = name_of({**r, "variant": reference})
    schemes: dict[str, Any] = {}
    for name, seeds in sorted(by.items()):
        schemes[name] = {"seeds": sorted(seeds)}
        for m in METRICS:
            mean, half = mean_ci([v[m] for v in seeds.values()])
            schemes[name][m] = {"mean": mean, "ci95": half}
    paired: dict[str, Any] = {}
    for name, seeds in sorted(by.items()):
        if partner[name] == name:
            continue
        ref = by.get(partner[name], {})
        common = sorted(set(ref) & set(seeds))
        paired[name] = {"seeds": common}
        for m in METRICS:
            diffs = [ref[s][m] - seeds[s][m] for s in common]
            if not diffs or any(not math.isfinite(x) for x in diffs):
                paired[name][m] = {"mean": math.nan, "ci95": math.nan, "significant": False}
                continue
            mean, half = mean_ci(diffs)
            paired[name][m] = {"mean": mean, "ci95": half,
                               "significant": len(diffs) > 1 and abs(mean) > half}
    return {"reference": reference, "schemes": schemes, "paired": paired}


def write_comparison(out_dir: Path, result: dict[str, Any]) -> list[Path]:
    from testbed.plots import plt

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "slim_compare.json").write_text(json.dumps(result, indent=1))
    with (out_dir / "slim_compare.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["scheme", "seeds", *[f"{m}_{k}" for m in METRICS for k in ("mean", "ci95")]])
        for name, s in result["schemes"].items():
            w.writerow([name, " ".join(map(str, s["seeds"])),
                        *[f"{s[m][k]:.4g}" for m in METRICS for k in ("mean", "ci95")]])
    names = list(result["schemes"])
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    for ax, (m, label) in zip(axes, [("p95_ms", "p95 completion or latency (ms)"),
                                     ("miss_pct", "missed or uncommitted (%)"),
                                     ("fat_mbps", "fat throughput (Mbit/s)")], strict=True):
        means = [result["schemes"][n][m]["mean"] for n in names]
        cis = [result["schemes"][n][m]["ci95"] for n in names]
        ax.bar(names, means, yerr=[0 if math.isnan(c) else c for c in cis], capsize=4,
               color="#4c72b0")
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        if m == "p95_ms":
            ax.set_yscale("log")
    fig.suptitle("mean over seeds, 95% CI", fontsize=9)
    fig.tight_layout()
    png = out_dir / "slim_compare.png"
    fig.savefig(png, dpi=150)
    plt.close(fig)
    return [out_dir / "slim_compare.json", out_dir / "slim_compare.csv", png]


def run_schemes(experiment: Path, seeds: Sequence[int], schemes: Sequence[str],
                results: Path | None) -> list[Path]:
    """Every scheme for every seed, one emulation run at a time."""
    from testbed import config, runner

    done = []
    for seed in seeds:
        for name in schemes:
            sets = [*schemes_for(experiment)[name], f"seed={seed}"]
            print(f"slim_compare: {name}, seed {seed}", file=sys.stderr, flush=True)
            loaded = config.load_experiment(experiment, sets)
            done.append(runner.run(loaded, results or runner.DEFAULT_RESULTS,
                                   show_progress=False))
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.slim_compare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="*", type=Path, help="run folders to compare")
    ap.add_argument("--experiment", type=Path, help="run its schemes first")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--schemes", default="cubic,bbr,abn-average,abn-dqn")
    ap.add_argument("--reference", default="abn-dqn")
    ap.add_argument("--results", type=Path)
    ap.add_argument("--out", type=Path, help="where the comparison goes")
    args = ap.parse_args(argv)
    runs = list(args.runs)
    if args.experiment is not None:
        known = schemes_for(args.experiment)
        unknown = set(args.schemes.split(",")) - set(known)
        if unknown:
            ap.error(f"unknown schemes {sorted(unknown)}; known: {list(known)}")
        runs += run_schemes(args.experiment, [int(s) for s in args.seeds.split(",")],
                            args.schemes.split(","), args.results)
    if not runs:
        ap.error("give run folders, or --experiment")
    result = aggregate(runs, args.reference)
    out = args.out or runs[0].parent / f"slim_compare__{time.strftime('%Y%m%d-%H%M%S')}"
    for path in write_comparison(out, result):
        print(path)
    ref = result["reference"]
    for name, p in result["paired"].items():
        for m in METRICS:
            d = p[m]
            print(f"{ref} - {name}: {m} {d['mean']:+.4g} ± {d['ci95']:.3g} "
                  f"({'significant' if d['significant'] else 'not significant'}, "
                  f"seeds {p['seeds']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
