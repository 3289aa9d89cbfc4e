"""Shaping accuracy on whatever backend `chaintwin doctor` picks (netem in the vm-check
guest): the issue-20 checks, with the numbers printed and written as JSON.

- RTT: 40 ms configured (20 ms each way on the path link), 30 `ping -U` at 0.1 s: the
  average within +-1 ms (over pings 2-30: the first also waits for ARP, which netem
  delays and the userspace line does not); the same path without delay first, for what
  the emulated machine itself adds.
- loss: 1% on mb -> h2, 10,000 flood pings: measured 0.7-1.3%.
- rate: HTB 100 Mbit/s, 5 ms, one Cubic flow for 8 s: wire rate (receiver, after 1 s)
  within 5%.
- jitter baseline (no pass/fail): 100 Mbit/s, delay 50 ms +- 25 ms per packet (25 ms +
  U(0, 50) ms, reordering), one Cubic and one BBR flow for --jitter-seconds each: the
  utilisation, as `benchmarks/linkemu_goodput.py --rtts 50 --rates 0.1 --jitter 25
  --granularity packet` measures it for the userspace line (that benchmark reads the
  delay line's counters, which a netem run has not, hence this copy).

The same experiments as tests/emulation/test_shaping_accuracy.py and the benchmark, on
the line topology h1 - mb - h2. Needs root and Mininet.

    .venv/bin/python ci/vm/accuracy.py [--json FILE] [--jitter-seconds 20]
        [--jitter-rates 100,200] [--skip-jitter]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path.cwd()))

from testbed import config, runner  # noqa: E402

FRAME, PAYLOAD = 1514, 1448
TOPO = {
    "name": "line",
    "hosts": {"h1": {"role": "endpoint"}, "mb": {"role": "middlebox"},
              "h2": {"role": "endpoint"}},
    "links": [{"name": "left", "ends": ["h1", "mb"]}, {"name": "path", "ends": ["mb", "h2"]}],
}


def run(tmp: Path, exp: dict[str, Any]) -> tuple[Path, dict[str, Any]]:
    (tmp / "topo.yaml").write_text(yaml.safe_dump(TOPO))
    path = tmp / f"{exp['name']}.yaml"
    path.write_text(yaml.safe_dump({"topology": "topo.yaml", **exp}))
    run_dir = runner.run(config.load_experiment(path), tmp / "results", show_progress=False)
    man = json.loads((run_dir / "manifest.json").read_text())
    if man["status"] in ("failed", "interrupted"):
        raise RuntimeError(f"{exp['name']}: run {man['status']}: {man.get('error')}")
    return run_dir, man


def netem_cmds(man: dict[str, Any]) -> list[str]:
    """The netem qdiscs the run installed (proof of the backend, and its arguments)."""
    out = []
    for c in man.get("commands", []):
        text = c.get("cmd", "") if isinstance(c, dict) else str(c)
        if "netem" in text:
            out.append(f"{c.get('node')}: {text}" if isinstance(c, dict) else text)
    return out


def ping_stats(text: str) -> tuple[int, int, float, float, float]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
    r = re.search(r"rtt min/avg/max/mdev = ([\d.]+)/([\d.]+)/([\d.]+)/", text)
    assert m, text[-300:]
    mn, avg, mx = (float(r.group(i)) for i in (1, 2, 3)) if r else (float("nan"),) * 3
    return int(m.group(1)), int(m.group(2)), mn, avg, mx


def reply_times(text: str) -> list[tuple[int, float]]:
    return [(int(m.group(1)), float(m.group(2)))
            for m in re.finditer(r"icmp_seq=(\d+) .*?time=([\d.]+) ms", text)]


def rtt(tmp: Path, one_way_ms: float) -> dict[str, Any]:
    count = 30
    run_dir, man = run(tmp, {
        "name": f"rtt{2 * one_way_ms:g}", "duration": count * 0.1 + 2 * one_way_ms / 1000 + 2,
        "links": {"path": {"delay": f"{one_way_ms:g}ms"}},
        "processes": [{"name": "ping", "kind": "ping", "host": "h1", "target": "h2",
                       "count": count, "interval": 0.1, "start": 0.5, "required": True}],
    })
    text = (run_dir / "logs" / "ping.log").read_text()
    sent, got, mn, avg, mx = ping_stats(text)
    times = reply_times(text)
    # The first ping waits for ARP, which netem (a qdisc: every frame) delays too and the
    # userspace line (an iptables rule: IP only) does not: report the rest separately.
    rest = sorted(t for seq, t in times if seq > 1)
    rest_avg = sum(rest) / len(rest) if rest else float("nan")
    configured = 2 * one_way_ms
    return {"check": f"rtt{configured:g}", "configured_ms": configured, "sent": sent,
            "received": got, "min_ms": mn, "avg_ms": avg, "max_ms": mx,
            "first_ms": times[0][1] if times else None,
            "avg_after_first_ms": round(rest_avg, 3),
            "median_after_first_ms": rest[len(rest) // 2] if rest else None,
            "status": man["status"], "backend": man["shaping_backend"],
            "netem": netem_cmds(man),
            "pass": (sent == got == count and abs(rest_avg - configured) <= 1.0)
            if configured else None}


def loss(tmp: Path) -> dict[str, Any]:
    n = 10000
    run_dir, man = run(tmp, {
        "name": "loss", "duration": 120, "until_done": True,
        "links": {"path": {"loss": "1%", "direction": "forward"}},
        "processes": [{"name": "flood", "kind": "command", "host": "h1", "required": True,
                       "command": f"ping -n -q -f -c {n} -W 0.05 {{ip:h2}}"}],
    })
    sent, got, *_ = ping_stats((run_dir / "logs" / "flood.log").read_text())
    frac = (sent - got) / sent
    return {"check": "loss", "configured": 0.01, "sent": sent, "received": got,
            "loss": round(frac, 5), "status": man["status"], "backend": man["shaping_backend"],
            "netem": netem_cmds(man), "pass": sent == n and 0.007 <= frac <= 0.013}


def iperf(tmp: Path, name: str, link: dict[str, Any], seconds: float, cc: str,
          steady_after: float) -> tuple[dict[str, Any], dict[str, Any]]:
    run_dir, man = run(tmp, {
        "name": name, "duration": seconds + 2.5, "until_done": True,
        "links": {"path": {**link, "direction": "forward"}},
        "processes": [
            {"name": "srv", "kind": "iperf3_server", "host": "h2"},
            {"name": "flow", "kind": "iperf3_client", "host": "h1", "server": "h2",
             "start": 0.5, "duration": seconds, "congestion": cc},
        ],
    })
    data = json.loads((run_dir / "logs" / "flow.json").read_text())
    # Count what the receiver got: the sender's intervals include its socket buffer.
    recv = data["server_output_json"]
    late = [i["sum"] for i in recv["intervals"] if i["sum"]["start"] >= steady_after]
    steady = sum(i["bytes"] for i in late) * 8 / max(1e-9, sum(i["seconds"] for i in late)) / 1e6
    return {"goodput_mbit": round(data["end"]["sum_received"]["bits_per_second"] / 1e6, 2),
            "steady_goodput_mbit": round(steady, 2),
            "retransmits": data["end"]["sum_sent"].get("retransmits"),
            "status": man["status"], "backend": man["shaping_backend"],
            "netem": netem_cmds(man)}, man


def rate(tmp: Path) -> dict[str, Any]:
    r, _ = iperf(tmp, "rate100", {"bw": "100mbit", "delay": "5ms"}, 8, "cubic", 1.0)
    wire = r["steady_goodput_mbit"] * FRAME / PAYLOAD
    return {"check": "rate", "configured_mbit": 100, "wire_mbit": round(wire, 2), **r,
            "pass": abs(wire - 100) / 100 <= 0.05}


def jitter(tmp: Path, cc: str, seconds: float, mbit: int) -> dict[str, Any]:
    r, _ = iperf(tmp, f"jitter_{cc}_{mbit}", {"bw": f"{mbit}mbit", "delay": "50ms",
                                              "jitter": "25ms", "granularity": "packet"},
                 seconds, cc, 3.0)
    return {"check": f"jitter_{cc}_{mbit}", "rate_mbit": mbit, "delay": "50ms +- 25ms",
            "seconds": seconds, **r,
            "utilisation": round(r["goodput_mbit"] / mbit, 3),
            "steady_utilisation": round(r["steady_goodput_mbit"] / mbit, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--jitter-seconds", type=float, default=20)
    ap.add_argument("--jitter-rates", default="100", help="Mbit/s, comma-separated")
    ap.add_argument("--skip-jitter", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root (Mininet)", file=sys.stderr)
        return 1
    rows: list[dict[str, Any]] = []
    checks: list[Any] = [lambda t: rtt(t, 0), lambda t: rtt(t, 20), loss, rate]
    if not args.skip_jitter:
        for mbit in (int(x) for x in args.jitter_rates.split(",")):
            checks += [lambda t, m=mbit, cc=cc: jitter(t, cc, args.jitter_seconds, m)
                       for cc in ("cubic", "bbr")]
    with tempfile.TemporaryDirectory() as d:
        for i, check in enumerate(checks):
            tmp = Path(d) / str(i)
            tmp.mkdir()
            t = time.monotonic()
            try:
                row = check(tmp)
            except Exception as exc:  # report the others too
                row = {"check": f"#{i}", "error": repr(exc), "pass": False}
            row["wall_s"] = round(time.monotonic() - t, 1)
            rows.append(row)
            print("ACCURACY " + json.dumps({k: v for k, v in row.items() if k != "netem"}),
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    failed = [r["check"] for r in rows if r.get("pass") is False]
    print("accuracy: " + (f"FAILED {', '.join(failed)}" if failed else "all checks passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
