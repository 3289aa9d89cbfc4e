"""Congestion controls compared in one run (the ABN paper's Figures 6-8): per-scheme
throughput over time, a summary table and a Pantheon-style plot, from the run's files.

A run qualifies when it has iperf3 clients with different congestion controls and
captures on their client and server hosts. Each client is one scheme; they may run one
after another (as the paper's figures do) or side by side. Sources, all independent of
the system under test:
- throughput on the wire: the receiver's pcap (throughput.csv, 100 ms bins), IP bytes
  plus the 14-byte Ethernet header per packet (what the HTB bottleneck counts);
- goodput: the receiver's byte count as iperf3 reports it;
- RTT: the sender's pcap, each ACK matched to the data segment whose end it
  acknowledges, never for a segment sent twice (Karn's rule);
- retransmissions: segments the sender's pcap shows sent again (bytes / MSS);
  spurious ones: the bytes the receiver reports as duplicates in D-SACK blocks (RFC 2883:
  a first SACK block below the cumulative ACK or inside the second block) / MSS.
RTT inflation is the p95 RTT minus what the emulated path alone gives at p95: the lowest
RTT any scheme of the run saw plus the configured jitter's share up to its 95th
percentile (uniform jitter of +-j adds 0.95 * 2j above its minimum at p95). What is left
is queueing (and the sender's own delays).
"""

from __future__ import annotations

import csv
import json
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from testbed.analysis import IPERF_CSV, THROUGHPUT_CSV

SUMMARY_CSV = "scheme_summary.csv"
SERIES_CSV = "scheme_throughput.csv"
FIGURE = "scheme_throughput.png"
PANTHEON = "scheme_pantheon.png"
ETHERNET = 14
STEADY_FROM_S = 5.0
"""`wire_mbps_from_5s` leaves out each scheme's first seconds: at 200-300 ms RTT the
receiver's window autotuning alone takes ~3 s to open, whatever the sender does."""


@dataclass
class Scheme:
    name: str
    congestion: str
    client: str
    server: str
    port: int
    start: float
    duration: float


def schemes(manifest: dict[str, Any]) -> list[Scheme]:
    """The run's iperf3 clients, if they compare two or more congestion controls and
    both ends of each are captured."""
    exp = manifest.get("experiment", {})
    captured = {c["host"] for c in exp.get("captures", [])}
    out = []
    for p in exp.get("processes", []):
        if p["kind"] != "iperf3_client" or p["host"] not in captured or (
                p["server"] not in captured):
            continue
        dur = p.get("duration") or (exp.get("duration", 0) - p.get("start", 0))
        out.append(Scheme(p["name"], p["congestion"], p["host"], p["server"], p["port"],
                          float(p.get("start", 0)), float(dur)))
    return out if len({s.congestion for s in out}) >= 2 else []


def bottleneck_bps(manifest: dict[str, Any]) -> float | None:
    """The lowest rate shaped in the run (the bottleneck every scheme crosses)."""
    from testbed import units

    rates = [units.parse_rate_bps(d["shaping"]["bw"]) for d in manifest.get("shaping", [])
             if d.get("shaping", {}).get("bw") is not None]
    return min(rates) if rates else None


def jitter_s(manifest: dict[str, Any]) -> float:
    from testbed import units

    js = [units.parse_seconds(d["shaping"]["jitter"]) for d in manifest.get("shaping", [])
          if d.get("shaping", {}).get("jitter")]
    return sum(js)


# ------------------------------------------------------------------ sender pcap scan

def _pcap_records(path: Path):  # type: ignore[no-untyped-def]
    """(timestamp, frame bytes) of a classic pcap, Ethernet or Linux cooked."""
    with open(path, "rb") as fh:
        head = fh.read(24)
        if len(head) < 24:
            return
        magic = struct.unpack("<I", head[:4])[0]
        if magic in (0xA1B2C3D4, 0xA1B23C4D):
            endian = "<"
        elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
            endian = ">"
        else:
            raise ValueError(f"{path}: not a pcap file")
        nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
        link = struct.unpack(endian + "I", head[20:24])[0]
        offset = {1: 14, 113: 16, 101: 0}.get(link)
        if offset is None:
            raise ValueError(f"{path}: link type {link} not supported")
        rec = struct.Struct(endian + "IIII")
        div = 1e9 if nano else 1e6
        while True:
            h = fh.read(16)
            if len(h) < 16:
                return
            sec, frac, incl, _orig = rec.unpack(h)
            data = fh.read(incl)
            if len(data) < incl:
                return
            yield sec + frac / div, data[offset:]


@dataclass
class SenderView:
    rtt_ms: list[float]
    data_bytes: int
    retrans_bytes: int
    dsack_bytes: int
    mss: int


def scan_sender(pcap: Path, client_ip: str, server_ip: str, port: int,
                t_from: float, t_to: float) -> SenderView:
    """RTT samples, retransmitted and D-SACKed bytes of the data going to (server, port)
    between two absolute times, from a capture on the sender's side."""
    cip, sip = socket.inet_aton(client_ip), socket.inet_aton(server_ip)
    sent: dict[tuple[int, int], float] = {}  # (sport, end seq) -> first time sent
    resent: set[tuple[int, int]] = set()
    high: dict[int, int] = {}  # sport -> highest end seq sent (unwrapped)
    rtts: list[float] = []
    data = retrans = dsack = 0
    mss = 0
    for ts, ip in _pcap_records(pcap):
        if ts < t_from or ts > t_to or len(ip) < 40 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 0x0F) * 4
        total = (ip[2] << 8) | ip[3]
        tcp = ip[ihl:]
        if len(tcp) < 20:
            continue
        sport, dport, seq, ack = struct.unpack("!HHII", tcp[:12])
        doff = (tcp[12] >> 4) * 4
        payload = total - ihl - doff
        if ip[12:16] == cip and ip[16:20] == sip and dport == port and payload > 0:
            if payload <= 1500:  # a single segment (the capture also sees TSO bursts)
                mss = max(mss, payload)
            end = seq + payload
            h = high.get(sport)
            # unwrap relative to the highest seen (flows here move < 2 GB between packets)
            if h is not None:
                end += ((h - end + (1 << 31)) >> 32) << 32
                seq = end - payload
            data += payload
            if h is not None and seq < h:
                retrans += min(payload, h - seq)
                resent.add((sport, end & 0xFFFFFFFF))
            else:
                sent.setdefault((sport, end & 0xFFFFFFFF), ts)
            if h is None or end > h:
                high[sport] = end
        elif ip[12:16] == sip and ip[16:20] == cip and sport == port and payload == 0:
            key = (dport, ack)
            t_sent = sent.pop(key, None)
            if t_sent is not None and key not in resent:
                rtts.append((ts - t_sent) * 1000)
            dsack += _dsack_bytes(tcp[20:doff], ack)
    return SenderView(rtts, data, retrans, dsack, mss or 1448)


def _dsack_bytes(opts: bytes, ack: int) -> int:
    """Bytes reported as received twice by a D-SACK block (RFC 2883) in these options."""
    i, n = 0, len(opts)
    while i < n:
        kind = opts[i]
        if kind == 0:
            return 0
        if kind == 1:
            i += 1
            continue
        if i + 1 >= n or opts[i + 1] < 2:
            return 0
        length = opts[i + 1]
        if kind == 5 and length >= 10 and i + length <= n:
            blocks = [struct.unpack("!II", opts[j:j + 8]) for j in range(i + 2, i + length - 7, 8)]
            left, right = blocks[0]
            below = ((ack - right) & 0xFFFFFFFF) < (1 << 31)  # right <= ack, mod 2^32
            inside = len(blocks) > 1 and (
                ((left - blocks[1][0]) & 0xFFFFFFFF) < (1 << 31)
                and ((blocks[1][1] - right) & 0xFFFFFFFF) < (1 << 31))
            if below or inside:
                return (right - left) & 0xFFFFFFFF
            return 0
        i += length
    return 0


# ------------------------------------------------------------------ tables

def _series(run_dir: Path, manifest: dict[str, Any], sc: Scheme) -> tuple[list[float], list[float]]:
    """(t since the scheme's start, wire Mbit/s) per 100 ms from the receiver's capture."""
    caps = [c["name"] for c in manifest.get("captures", []) if c["name"].startswith(
        f"{sc.server}:")]
    ts: list[float] = []
    mbps: list[float] = []
    with open(run_dir / THROUGHPUT_CSV) as fh:
        for row in csv.DictReader(fh):
            if row["flow"] != sc.name or row["capture"] not in caps:
                continue
            t = float(row["t_s"]) - sc.start
            if 0 <= t < sc.duration:
                wire = int(row["ip_bytes"]) + ETHERNET * int(row["packets"])
                ts.append(t)
                mbps.append(wire * 8 / 0.1 / 1e6)
    order = np.argsort(ts)
    return [ts[i] for i in order], [mbps[i] for i in order]


def _iperf(run_dir: Path, name: str) -> dict[str, str]:
    path = run_dir / IPERF_CSV
    if not path.exists():
        return {}
    with open(path) as fh:
        return next((r for r in csv.DictReader(fh) if r["flow"] == name), {})


def summarise(run_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per scheme; also writes scheme_summary.csv and scheme_throughput.csv."""
    scs = schemes(manifest)
    t0 = manifest.get("timeline_t0_unix")
    if not scs or t0 is None or not (run_dir / THROUGHPUT_CSV).exists():
        return []
    cap_bps = bottleneck_bps(manifest)
    jit = jitter_s(manifest)
    ips = manifest["addressing"]["host_ips"]
    rows, series_rows = [], []
    for sc in scs:
        t, mbps = _series(run_dir, manifest, sc)
        series_rows += [[sc.name, sc.congestion, f"{a:.1f}", f"{b:.3f}"]
                        for a, b in zip(t, mbps, strict=True)]
        n_bins = max(1, int(round(sc.duration / 0.1)))
        mean = sum(mbps) / n_bins  # bins with nothing received count as zero
        late = [v for a, v in zip(t, mbps, strict=True) if a >= STEADY_FROM_S]
        steady = sum(late) / max(1, n_bins - int(round(STEADY_FROM_S / 0.1)))
        pcaps = [run_dir / c["file"] for c in manifest.get("captures", [])
                 if c["name"].startswith(f"{sc.client}:")]
        view = SenderView([], 0, 0, 0, 1448)
        for p in pcaps:
            v = scan_sender(p, ips[sc.client][0], ips[sc.server][0], sc.port,
                            t0 + sc.start, t0 + sc.start + sc.duration + 1)
            if v.data_bytes > view.data_bytes:
                view = v
        rtt = np.array(view.rtt_ms) if view.rtt_ms else None
        iperf = _iperf(run_dir, sc.name)
        row: dict[str, Any] = {
            "scheme": sc.name, "congestion": sc.congestion, "seconds": sc.duration,
            "wire_mbps": round(mean, 2),
            "wire_mbps_from_5s": round(steady, 2) if sc.duration > 2 * STEADY_FROM_S else "",
            "utilisation": round(mean * 1e6 / cap_bps, 4) if cap_bps else "",
            "goodput_mbps": iperf.get("goodput_mbps", ""),
            "rtt_min_ms": round(float(rtt.min()), 2) if rtt is not None else "",
            "rtt_p50_ms": round(float(np.percentile(rtt, 50)), 2) if rtt is not None else "",
            "rtt_p95_ms": round(float(np.percentile(rtt, 95)), 2) if rtt is not None else "",
            "rtt_p95_inflation_ms": "",  # set below, against the run's lowest RTT
            "rtt_samples": 0 if rtt is None else len(rtt),
            "retrans_segments": round(view.retrans_bytes / view.mss),
            "spurious_retrans_segments": round(view.dsack_bytes / view.mss),
            "retrans_pct": round(100 * view.retrans_bytes / view.data_bytes, 3)
            if view.data_bytes else "",
            "iperf3_retransmits": iperf.get("retransmits", ""),
        }
        row["_p95"] = float(np.percentile(rtt, 95)) if rtt is not None else None
        rows.append(row)
    # the path's own RTT: the lowest any scheme saw (one flow's minimum can hold a queue)
    mins = [float(r["rtt_min_ms"]) for r in rows if r["rtt_min_ms"] != ""]
    for r in rows:
        p95 = r.pop("_p95")
        if p95 is not None and mins:
            r["rtt_p95_inflation_ms"] = round(p95 - min(mins) - 0.95 * 2 * jit * 1000, 2)
    with open(run_dir / SUMMARY_CSV, "w", newline="") as fh:
        dw = csv.DictWriter(fh, fieldnames=list(rows[0]))
        dw.writeheader()
        dw.writerows(rows)
    with open(run_dir / SERIES_CSV, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["scheme", "congestion", "t_s", "wire_mbps"])
        w.writerows(series_rows)
    return rows


def read_summary(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / SUMMARY_CSV) as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ figures

def figures(run_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """The throughput-over-time figure and the Pantheon plot, from the CSVs alone."""
    if not (run_dir / SUMMARY_CSV).exists() or not (run_dir / SERIES_CSV).exists():
        return []
    from testbed import plots

    plt = plots.plt
    rows = read_summary(run_dir)
    series: dict[str, tuple[list[float], list[float]]] = {}
    with open(run_dir / SERIES_CSV) as fh:
        for r in csv.DictReader(fh):
            xs, ys = series.setdefault(r["scheme"], ([], []))
            xs.append(float(r["t_s"]))
            ys.append(float(r["wire_mbps"]))
    cap = bottleneck_bps(manifest)
    title = _title(manifest)
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=150)
    for r in rows:
        xs, ys = series.get(r["scheme"], ([], []))
        ax.plot(xs, ys, lw=0.9, label=f"{r['congestion']}: mean {float(r['wire_mbps']):.0f} "
                f"Mbit/s")
    if cap:
        ax.axhline(cap / 1e6, color="0.3", ls="--", lw=0.8, label="bottleneck rate")
    if manifest.get("health", {}).get("status") == "unreliable":
        ax.text(0.5, 0.98, plots.UNRELIABLE_TEXT, transform=ax.transAxes, ha="center",
                va="top", color="red", fontsize=8, fontweight="bold")
    ax.set_xlabel("time since the scheme's start (s)")
    ax.set_ylabel("throughput on the wire (Mbit/s, 100 ms)")
    ax.set_title(title, fontsize=9)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    out1 = run_dir / FIGURE
    fig.savefig(out1)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.0, 4.0), dpi=150)
    for r in rows:
        if r["rtt_p95_ms"] == "":
            continue
        x, y = float(r["rtt_p95_ms"]), float(r["wire_mbps"])
        ax.plot([x], [y], "o", ms=7)
        ax.annotate(r["congestion"], (x, y), textcoords="offset points", xytext=(6, 4),
                    fontsize=9)
    ax.invert_xaxis()  # Pantheon: better (lower delay) to the right
    if cap:
        ax.axhline(cap / 1e6, color="0.3", ls="--", lw=0.8)
    ax.set_xlabel("95th percentile RTT (ms, sender's pcap)")
    ax.set_ylabel("mean throughput on the wire (Mbit/s)")
    ax.set_title(title, fontsize=8)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out2 = run_dir / PANTHEON
    fig.savefig(out2)
    plt.close(fig)
    return [out1, out2]


def _title(manifest: dict[str, Any]) -> str:
    exp = manifest.get("experiment", {})
    cap = bottleneck_bps(manifest)
    shaped = [d["shaping"] for d in manifest.get("shaping", []) if d["shaping"].get("delay")]
    delay = (f", delay {shaped[0].get('delay')} +- {shaped[0].get('jitter', 0)} per packet"
             if shaped else "")
    rate = f"{cap / 1e6:g} Mbit/s" if cap else ""
    return f"{exp.get('name', '')} (seed {exp.get('seed')}): {rate}{delay}"


def analyse(run_dir: Path, manifest: dict[str, Any]) -> list[Path]:
    """Tables (if not there yet) and figures of a comparison run; [] for other runs."""
    if not schemes(manifest):
        return []
    made = []
    if not (run_dir / SUMMARY_CSV).exists():
        if not summarise(run_dir, manifest):
            return []
        made += [run_dir / SUMMARY_CSV, run_dir / SERIES_CSV]
    return made + figures(run_dir, manifest)


# ------------------------------------------------------------------ across runs

METRICS = ("wire_mbps", "wire_mbps_from_5s", "utilisation", "goodput_mbps", "rtt_p95_ms",
           "rtt_p95_inflation_ms", "retrans_segments", "spurious_retrans_segments")


def aggregate(run_dirs: list[Path]) -> dict[str, Any]:
    """Runs of one comparison experiment over several seeds: each metric's mean and 95%
    CI per scheme, and paired-by-seed differences between schemes (ratios for
    throughput), each marked significant only when its CI excludes no-difference."""
    from testbed import manifest as manifest_mod
    from testbed.stats import mean_ci

    per_run: list[tuple[int, str, dict[str, dict[str, str]]]] = []
    for d in run_dirs:
        man = manifest_mod.read(d)
        if not (d / SUMMARY_CSV).exists():
            continue
        rows = {r["congestion"]: r for r in read_summary(d)}
        per_run.append((int(man.get("seed", 0)), man.get("status", "?"), rows))
    if not per_run:
        raise ValueError("no run with a scheme_summary.csv among those given")
    seeds = [s for s, _, _ in per_run]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"two runs share a seed ({sorted(seeds)}): pass one run per seed")
    ccs = list(per_run[0][2])
    out: dict[str, Any] = {"seeds": seeds, "status": [st for _, st, _ in per_run],
                           "schemes": {}, "paired": []}
    for cc in ccs:
        out["schemes"][cc] = {}
        for m in METRICS:
            xs = [float(r[cc][m]) for _, _, r in per_run if cc in r and r[cc][m] != ""]
            if xs:
                mean, ci = mean_ci(xs)
                out["schemes"][cc][m] = {"mean": mean, "ci95": ci, "n": len(xs)}
    pairs = [(x, y) for i, x in enumerate(ccs) for y in ccs[i + 1:]]
    for lo, hi in pairs:
        both = [r for _, _, r in per_run if lo in r and hi in r]
        ratio = [float(r[hi]["wire_mbps"]) / max(float(r[lo]["wire_mbps"]), 1e-9) for r in both]
        infl = [float(r[hi]["rtt_p95_inflation_ms"]) - float(r[lo]["rtt_p95_inflation_ms"])
                for r in both if r[hi]["rtt_p95_inflation_ms"] != ""
                and r[lo]["rtt_p95_inflation_ms"] != ""]
        entry: dict[str, Any] = {"a": hi, "b": lo, "n": len(both),
                                 "a_faster_in": sum(x > 1 for x in ratio)}
        if ratio:
            mu, ci = mean_ci(ratio)
            entry["throughput_ratio"] = {"mean": mu, "ci95": ci,
                                         "significant": len(ratio) > 1 and abs(mu - 1) > ci}
        if infl:
            mu, ci = mean_ci(infl)
            entry["p95_inflation_diff_ms"] = {"mean": mu, "ci95": ci,
                                              "significant": len(infl) > 1 and abs(mu) > ci}
        out["paired"].append(entry)
    return out


def render(agg: dict[str, Any]) -> str:
    """A markdown table of an aggregate() result."""
    lines = [f"seeds {agg['seeds']} (status: {', '.join(agg['status'])})", "",
             "| scheme | " + " | ".join(METRICS) + " |",
             "| --- |" + " --- |" * len(METRICS)]
    for cc, ms in agg["schemes"].items():
        cells = [f"{ms[m]['mean']:.3g} ± {ms[m]['ci95']:.2g}" if m in ms else "" for m in METRICS]
        lines.append(f"| {cc} | " + " | ".join(cells) + " |")
    lines.append("")
    for p in agg["paired"]:
        parts = [f"{p['a']} vs {p['b']} (paired by seed, n={p['n']}; {p['a']} faster in "
                 f"{p['a_faster_in']} of {p['n']}):"]
        for key, label in (("throughput_ratio", "throughput ratio"),
                           ("p95_inflation_diff_ms", "p95 RTT inflation difference (ms)")):
            if key in p:
                v = p[key]
                sig = "significant" if v["significant"] else "NOT significant"
                parts.append(f"{label} {v['mean']:.3f} ± {v['ci95']:.3f} ({sig})")
        lines.append(" ".join(parts))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m testbed.cc_compare",
                                 description="Aggregate comparison runs over seeds: means, "
                                 "95% CIs, paired differences.")
    ap.add_argument("runs", nargs="+", type=Path, help="run folders, one per seed")
    ap.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    args = ap.parse_args(argv)
    try:
        agg = aggregate(args.runs)
    except (ValueError, OSError) as exc:
        print(f"cc_compare: {exc}")
        return 2
    print(json.dumps(agg, indent=1) if args.json else render(agg))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
