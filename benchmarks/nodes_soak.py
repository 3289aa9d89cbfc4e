"""Memory of validators under steady load (issue 18's soak): RSS per validator over time.

    python benchmarks/nodes_soak.py                    # n=4, 50 TPS, 10 minutes
    python benchmarks/nodes_soak.py --tps 200 --minutes 3

Four validator processes on localhost (`python -m nodes node`), one workload client in
this process. Every `--every` seconds it prints each validator's RSS (MB, from
/proc/<pid>/status) and height; at the end the growth per minute after the warm-up
(the first `--warmup` minutes), from a least-squares line through each validator's
samples. The target is < 1 MB/min per validator.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from nodes.client import WorkloadClient
from nodes.crypto import KeyPair
from nodes.genesis import write_genesis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nodes_throughput import ROOT, TIMING, free_ports, stop_all  # noqa: E402


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def soak(folder: Path, ports: list[int], pids: list[int], tps: float, seconds: float,
               every: float) -> list[tuple[float, list[float]]]:
    client = WorkloadClient("client0", KeyPair.load(folder / "keys" / "client0.key"),
                            [("127.0.0.1", p) for p in ports], [(0.0, tps)], seconds,
                            payload_size=200, drain=3.0)
    run = asyncio.create_task(client.run())
    samples: list[tuple[float, list[float]]] = []
    t0 = time.time()
    while not run.done():
        samples.append((time.time() - t0, [rss_mb(p) for p in pids]))
        print(f"{samples[-1][0]:6.0f} s  RSS MB " +
              " ".join(f"{x:6.1f}" for x in samples[-1][1]), flush=True)
        await asyncio.wait([run], timeout=every)
    res = run.result().summary()
    print(json.dumps({k: res[k] for k in ("submitted", "committed", "latency_p50")}))
    return samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=4)
    ap.add_argument("--tps", type=float, default=50)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--warmup", type=float, default=2)
    ap.add_argument("--every", type=float, default=30)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nodes-soak-") as tmp:
        folder = Path(tmp)
        ports = free_ports(a.n)
        write_genesis(folder, a.n, ports=ports, timing=TIMING)
        procs = [subprocess.Popen([sys.executable, "-m", "nodes", "node", "--config",
                                   str(folder / f"node-v{i}.yaml")], cwd=ROOT,
                                  start_new_session=True) for i in range(a.n)]
        try:
            time.sleep(1.0)
            samples = asyncio.run(soak(folder, ports, [p.pid for p in procs], a.tps,
                                       a.minutes * 60, a.every))
        finally:
            stop_all(procs, 10.0)
    after = [(t, r) for t, r in samples if t >= a.warmup * 60]
    if len(after) < 3:
        print("too few samples after the warm-up for a slope")
        return 1
    t = np.array([x[0] for x in after]) / 60
    for i in range(a.n):
        slope = np.polyfit(t, np.array([x[1][i] for x in after]), 1)[0]
        print(f"v{i}: RSS {after[0][1][i]:.1f} -> {after[-1][1][i]:.1f} MB, "
              f"{slope:+.2f} MB/min after {a.warmup:g} min (target < 1)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
