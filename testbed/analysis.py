"""From saved artifacts to tables: pcaps -> per-flow throughput CSV, iperf3 JSON -> summary.

Analysis reads only files in the run folder (never the live network), so figures can be
redrawn and tables recomputed without rerunning (as in Pantheon).
"""

from __future__ import annotations

import csv
import json
import socket
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dpkt

BIN_S = 0.1
THROUGHPUT_CSV = "throughput.csv"
FLOWS_CSV = "flows.csv"
IPERF_CSV = "iperf3_summary.csv"


@dataclass(frozen=True)
class FlowKey:
    src: str
    dst: str
    sport: int
    dport: int

    def label(self) -> str:
        return f"{self.src}:{self.sport}>{self.dst}:{self.dport}"


def _ip_packets(path: Path):  # type: ignore[no-untyped-def]
    with open(path, "rb") as fh:
        try:
            reader = dpkt.pcap.Reader(fh)
        except ValueError as exc:
            raise ValueError(f"{path}: not a pcap file ({exc})") from None
        linktype = reader.datalink()
        for ts, buf in reader:
            try:
                if linktype == dpkt.pcap.DLT_EN10MB:
                    frame = dpkt.ethernet.Ethernet(buf)
                    ip = frame.data
                elif linktype == dpkt.pcap.DLT_LINUX_SLL:
                    ip = dpkt.sll.SLL(buf).data
                else:
                    ip = dpkt.ip.IP(buf)
            except (dpkt.dpkt.UnpackError, dpkt.dpkt.NeedData):
                continue
            if isinstance(ip, dpkt.ip.IP):
                yield ts, ip


def flow_bins(pcap: Path, t0: float, bin_s: float = BIN_S) -> dict[FlowKey, dict[int, list[int]]]:
    """Per TCP flow direction carrying data: bin index -> [ip_bytes, payload_bytes, packets].

    IP bytes come from the IP header's total length, which for a GSO segment captured
    before segmentation is the whole segment, as it should be for throughput.
    """
    bins: dict[FlowKey, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0, 0]))
    for ts, ip in _ip_packets(pcap):
        tcp = ip.data
        if not isinstance(tcp, dpkt.tcp.TCP):
            continue
        ip_len = ip.len if ip.len else len(ip)
        payload = max(0, ip_len - ip.hl * 4 - tcp.off * 4)
        if payload == 0:
            continue
        key = FlowKey(socket.inet_ntoa(ip.src), socket.inet_ntoa(ip.dst), tcp.sport, tcp.dport)
        b = bins[key][int((ts - t0) // bin_s)]
        b[0] += ip_len
        b[1] += payload
        b[2] += 1
    return bins


def name_flows(keys: list[FlowKey], names: dict[tuple[str, int], str]) -> dict[FlowKey, str]:
    """Name flows after the process that made them: (server ip, server port) -> name.

    iperf3's small control connection to the same port gets the same name;
    write_throughput drops it with the other trickles (< 1% of the largest flow).
    """
    out: dict[FlowKey, str] = {}
    for k in keys:
        name = names.get((k.dst, k.dport)) or names.get((k.src, k.sport))
        out[k] = name or k.label()
    return out


def write_throughput(run_dir: Path, captures: list[dict[str, Any]], t0: float,
                     flow_names: dict[tuple[str, int], str], bin_s: float = BIN_S) -> Path:
    """throughput.csv: one row per (capture, flow, 100 ms bin), zero bins included."""
    rows: list[list[Any]] = []
    flow_rows: list[list[Any]] = []
    for cap in captures:
        pcap = run_dir / cap["file"]
        if not pcap.exists() or pcap.stat().st_size <= 24:
            continue
        bins = flow_bins(pcap, t0, bin_s)
        # Drop iperf3's control connections and other trickles: < 1% of the largest flow.
        totals = {k: sum(v[0] for v in b.values()) for k, b in bins.items()}
        if not totals:
            continue
        biggest = max(totals.values())
        names = name_flows(list(bins), flow_names)
        for key, per_bin in bins.items():
            if totals[key] < 0.01 * biggest:
                continue
            first, last = min(per_bin), max(per_bin)
            for i in range(first, last + 1):
                ipb, pay, pk = per_bin.get(i, (0, 0, 0))
                rows.append([cap["name"], names[key], f"{i * bin_s:.3f}", ipb, pay, pk,
                             f"{ipb * 8 / bin_s / 1e6:.3f}", f"{pay * 8 / bin_s / 1e6:.3f}"])
            span = (last - first + 1) * bin_s
            flow_rows.append([cap["name"], names[key], key.src, key.sport, key.dst, key.dport,
                              f"{first * bin_s:.3f}", f"{(last + 1) * bin_s:.3f}", totals[key],
                              f"{totals[key] * 8 / span / 1e6:.3f}"])
    out = run_dir / THROUGHPUT_CSV
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["capture", "flow", "t_s", "ip_bytes", "payload_bytes", "packets",
                    "ip_mbps", "goodput_mbps"])
        w.writerows(rows)
    with open(run_dir / FLOWS_CSV, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["capture", "flow", "src", "sport", "dst", "dport", "first_s", "last_s",
                    "ip_bytes", "mean_ip_mbps"])
        w.writerows(flow_rows)
    return out


def iperf3_summary(run_dir: Path, clients: list[dict[str, Any]]) -> Path | None:
    """iperf3_summary.csv from the clients' JSON: goodput and retransmits per flow."""
    rows = []
    for c in clients:
        path = run_dir / "logs" / c["log"]
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            rows.append([c["name"], c.get("congestion", ""), "", "", "", "no valid iperf3 JSON"])
            continue
        if "error" in data:
            rows.append([c["name"], c.get("congestion", ""), "", "", "", data["error"]])
            continue
        end = data.get("end", {})
        sent = end.get("sum_sent", {})
        recv = end.get("sum_received", {})
        cc = end.get("sender_tcp_congestion", c.get("congestion", ""))
        rows.append([c["name"], cc, f"{sent.get('seconds', 0):.3f}",
                     f"{recv.get('bits_per_second', 0) / 1e6:.3f}",
                     sent.get("retransmits", ""), ""])
    if not rows:
        return None
    out = run_dir / IPERF_CSV
    with open(out, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["flow", "congestion", "seconds", "goodput_mbps", "retransmits", "error"])
        w.writerows(rows)
    return out


def read_throughput(run_dir: Path) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """(capture, flow) -> (times, goodput Mbit/s) from throughput.csv."""
    series: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    with open(run_dir / THROUGHPUT_CSV) as fh:
        for row in csv.DictReader(fh):
            t, v = series.setdefault((row["capture"], row["flow"]), ([], []))
            t.append(float(row["t_s"]))
            v.append(float(row["goodput_mbps"]))
    return series
