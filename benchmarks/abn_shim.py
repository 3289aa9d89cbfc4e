"""What the ABN shim costs on a middlebox: ACKs rewritten per second, the delay it adds,
its CPU, and the flow's goodput with and without it, at several offered rates.

A line h1 - mb - h2, HTB at the rate on mb -> h2 with 10 ms one-way delay, one iperf3
flow for --seconds, once without the shim (Cubic) and once with the shim on mb governing
the rate (the testbed's abn role; the sender runs --congestion). With --granularity
packet (default) the delay line hands the receiver MTU packets, so the shim sees the ACK
stream a real 1 Gbit/s flow sends (one per two packets); `segment` is the cheap case.
The added delay is the time from a packet's arrival in the shim's queue to its verdict,
from the lane's histogram (bucket edges 50, 100, 250, 500 us, 1, 2, 5 ms).
Target (issue 14): keeps up with the ACK stream of a 1 Gbit/s flow on 2 cores with
< 1 ms added p99.

    .venv/bin/python benchmarks/abn_shim.py [--rates 0.5,1,2] [--seconds 10]
        [--granularity packet|segment] [--congestion cubic|abn]
Needs root and Mininet.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402

from testbed import config, runner  # noqa: E402

EDGES_US = [50, 100, 250, 500, 1000, 2000, 5000]
TOPO = {
    "name": "shimbench",
    "hosts": {"h1": {}, "mb": {"role": "middlebox"}, "h2": {}},
    "links": [{"name": "left", "ends": ["h1", "mb"]}, {"name": "path", "ends": ["mb", "h2"]}],
}


def percentile_us(hist: list[int], q: float) -> str:
    """The histogram bucket holding quantile q, as '<edge'."""
    total, seen = sum(hist), 0
    for i, n in enumerate(hist):
        seen += n
        if total and seen >= q * total:
            return f"<{EDGES_US[i]}" if i < len(EDGES_US) else f">{EDGES_US[-1]}"
    return "-"


def one(tmp: Path, gbit: float, seconds: float, with_shim: bool, granularity: str,
        congestion: str) -> dict:
    topo = json.loads(json.dumps(TOPO))
    if with_shim:  # the shim as the testbed runs it: the abn role on the middlebox
        topo["hosts"]["mb"]["abn"] = {"link": "path", "capacity": f"{gbit}gbit"}
    (tmp / "topo.yaml").write_text(yaml.safe_dump(topo))
    procs = [{"name": "srv", "kind": "iperf3_server", "host": "h2"},
             {"name": "flow", "kind": "iperf3_client", "host": "h1", "server": "h2",
              "start": 1.0, "duration": seconds,
              "congestion": congestion if with_shim else "cubic"}]
    exp = {"name": f"shim_{gbit}g_{int(with_shim)}", "topology": "topo.yaml",
           "duration": seconds + 2.5,
           "links": {"path": {"bw": f"{gbit}gbit", "delay": "10ms", "direction": "forward",
                              "granularity": granularity}},
           "processes": procs}
    path = tmp / "exp.yaml"
    path.write_text(yaml.safe_dump(exp))
    run_dir = runner.run(config.load_experiment(path), tmp / "results", show_progress=False)
    man = json.loads((run_dir / "manifest.json").read_text())
    flow = json.loads((run_dir / "logs" / "flow.json").read_text())
    row = {"rate_mbit": gbit * 1000, "granularity": granularity, "shim": with_shim,
           "congestion": procs[1]["congestion"], "status": man["status"],
           "goodput_ratio": round(flow["end"]["sum_received"]["bits_per_second"]
                                  / (gbit * 1e9), 3)}
    if with_shim:
        st = man["roles"]["abn:mb"]["counters"]
        row.update({
            "packets_per_s": round(st["received"] / seconds),
            "acks_rewritten_per_s": round(st["abn"]["written"] / seconds),
            "no_room": st["abn"]["no_room"], "overflow": st["overflow"],
            "added_p50_us": percentile_us(st["late_hist"], 0.5),
            "added_p99_us": percentile_us(st["late_hist"], 0.99),
            "added_max_us": st["late_max_us"],
            "shim_cpu": round(st["cpu_s"] / (seconds + 2.5), 2),
        })
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="0.5,1,2")
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--granularity", choices=("packet", "segment"), default="packet",
                    help="packet: the receiver sees MTU packets and ACKs every other one "
                    "(the real ACK stream); segment: GSO segments, ~30x fewer ACKs")
    ap.add_argument("--congestion", default="cubic",
                    help="the sender's congestion control with the shim (abn: it paces "
                    "at the notified rate)")
    common.add_json_option(ap)
    args = ap.parse_args()
    if common.needs_root():
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for gbit in [float(x) for x in args.rates.split(",")]:
            for with_shim in (False, True):
                r = one(Path(d), gbit, args.seconds, with_shim, args.granularity,
                        args.congestion)
                rows.append(r)
                print(json.dumps(r), flush=True)
    common.write_json(args.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
