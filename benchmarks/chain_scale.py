"""How many validators the emulator carries: a star chain with and without link delay.

For each validator count N: N validators and one client on a Linux bridge, each access
link 100 Mbit/s with --delay one-way (so 2 x delay between two hosts), a PBFT chain, the
client at --tps for --seconds. The same run is repeated without delay (the reference).
Prints committed fraction, p50/p95 latency, the run's status (`unreliable` when the
emulator fell behind), the delay-line process's CPU and the machine's load.

Target (issue 13): >= 99% committed and p50 <= 1.5 x (p50 without delay) + 20 ms.

    .venv/bin/python benchmarks/chain_scale.py [--validators 16,32,48,64] [--tps 100]
        [--seconds 30] [--delay 10ms] [--json out.json]
Needs root and Mininet.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

from testbed import config, runner  # noqa: E402


def star(n: int, delay: str | None) -> dict:
    hosts = {f"n{i}": {"role": "node"} for i in range(1, n + 1)} | {"c1": {"role": "client"}}
    shaping = {"bw": "100mbit"} | ({"delay": delay} if delay else {})
    links = [{"name": f"l{h}", "ends": [h, "sw"], **shaping} for h in hosts]
    return {"name": f"star{n}", "hosts": hosts, "switches": {"sw": {}}, "links": links}


def one(tmp: Path, n: int, delay: str | None, tps: int, seconds: float) -> dict:
    tag = f"star{n}_{'d' if delay else 'nodelay'}"
    (tmp / f"{tag}.topo.yaml").write_text(yaml.safe_dump(star(n, delay)))
    exp = {
        "name": tag, "topology": f"{tag}.topo.yaml", "duration": seconds + 8,
        "chain": {"validators": [f"n{i}" for i in range(1, n + 1)], "protocol": "pbft"},
        "processes": [{"name": "load", "kind": "chain_client", "host": "c1", "tps": tps,
                       "size": 200, "duration": seconds, "start": 1, "drain": 5}],
    }
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(exp))
    t = time.monotonic()
    run_dir = runner.run(config.load_experiment(path), tmp / "results", show_progress=False)
    wall = time.monotonic() - t
    man = json.loads((run_dir / "manifest.json").read_text())
    rows = list(csv.DictReader(open(run_dir / "chain_latency.csv")))
    lat = sorted(float(r["latency_s"]) for r in rows if r["latency_s"])
    dl = man.get("delay_lines") or {}
    hostcpu = man.get("health", {}).get("summary", {}).get("host", {})
    pct = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1)) if lat else (
        lambda q: None)
    return {
        "validators": n, "delay": delay or "0", "submitted": len(rows), "committed": len(lat),
        "committed_frac": round(len(lat) / max(1, len(rows)), 4),
        "p50_ms": round(statistics.median(lat) * 1000, 1) if lat else None, "p95_ms": pct(0.95),
        "status": man["status"], "health_reasons": man.get("health", {}).get("reasons", [])[:3],
        "delay_line_cpu_s": dl.get("cpu_s"), "lanes": len(dl.get("links", {})),
        "host_busy_mean": hostcpu.get("busy_mean"), "wall_s": round(wall, 1),
        "run_dir": str(run_dir),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--validators", default="16,32")
    ap.add_argument("--tps", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--delay", default="10ms")
    ap.add_argument("--no-reference", action="store_true", help="skip the runs without delay")
    ap.add_argument("--keep", help="keep run folders under this directory")
    common.add_json_option(ap)
    args = ap.parse_args()
    if common.needs_root():
        return 1
    rows = []
    print(f"{'N':>3} {'delay':>6} {'sent':>5} {'commit':>7} {'p50':>7} {'p95':>7} "
          f"{'target':>7} {'ok?':>4} {'status':>10} {'dl cpu':>6} {'busy':>5}", flush=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(args.keep) if args.keep else Path(d)
        tmp.mkdir(parents=True, exist_ok=True)
        for n in [int(x) for x in args.validators.split(",")]:
            ref = None if args.no_reference else one(tmp, n, None, args.tps, args.seconds)
            res = one(tmp, n, args.delay, args.tps, args.seconds)
            for r in ([ref] if ref else []) + [res]:
                target = None
                if r is res and ref and ref["p50_ms"] is not None:
                    target = round(1.5 * ref["p50_ms"] + 20, 1)
                    r["target_p50_ms"] = target
                    r["meets_target"] = (r["committed_frac"] >= 0.99 and r["p50_ms"] is not None
                                         and r["p50_ms"] <= target)
                rows.append(r)
                cpu = "" if r["delay_line_cpu_s"] is None else f"{r['delay_line_cpu_s']:.1f}s"
                print(f"{n:>3} {r['delay']:>6} {r['submitted']:>5} {r['committed_frac']:>7.3f} "
                      f"{r['p50_ms']!s:>7} {r['p95_ms']!s:>7} {target!s:>7} "
                      f"{str(r.get('meets_target', '')):>4} {r['status']:>10} {cpu:>6} "
                      f"{r['host_busy_mean']!s:>5}   ({r['wall_s']} s)", flush=True)
    common.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
