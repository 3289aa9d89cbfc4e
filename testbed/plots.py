"""Figures drawn only from saved CSVs (so `chaintwin report` can redraw them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from testbed.analysis import THROUGHPUT_CSV, read_throughput  # noqa: E402

UNRELIABLE_TEXT = "UNRELIABLE: emulator could not keep up (see manifest health)"


def mark_unreliable(ax: Any, manifest: dict[str, Any]) -> int:
    """Shade the periods in which the emulator fell behind (times from the timeline's
    start, as the figures' x axes) and say so on top of an unreliable run's axes, so a
    figure cannot be shown without its caveat. Returns how many spans were drawn."""
    health = manifest.get("health") or {}
    spans = 0
    for p in health.get("periods", []):
        ax.axvspan(p["start_s"], p["end_s"], color="red", alpha=0.12, lw=0,
                   label="emulator fell behind" if spans == 0 else None)
        spans += 1
    if health.get("status") == "unreliable":
        ax.text(0.5, 0.98, UNRELIABLE_TEXT, transform=ax.transAxes, ha="center", va="top",
                color="red", fontsize=8, fontweight="bold",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
    return spans


def throughput_figure(run_dir: Path, manifest: dict[str, Any]) -> Path | None:
    if not (run_dir / THROUGHPUT_CSV).exists():
        return None
    series = read_throughput(run_dir)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=150)
    flows = [flow for _, flow in series]
    for (cap, flow), (t, v) in sorted(series.items()):
        label = flow if flows.count(flow) == 1 else f"{flow} @ {cap}"
        ax.plot(t, v, lw=1.2, label=label)
    for ev in manifest.get("events", []):
        if ev.get("action") not in ("start", "stop"):
            ax.axvline(ev["at"], color="0.5", ls=":", lw=0.8)
            ax.annotate(ev["action"], (ev["at"], ax.get_ylim()[1]), fontsize=7, rotation=90,
                        va="top", ha="right", color="0.4")
    mark_unreliable(ax, manifest)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("goodput (Mbit/s, 100 ms bins)")
    exp = manifest.get("experiment", {})
    ax.set_title(f"{exp.get('name', '')}: per-flow throughput from pcap", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_ylim(bottom=0)
    fig.tight_layout()
    out = run_dir / "throughput.png"
    fig.savefig(out)
    plt.close(fig)
    return out


def chain_latency_figure(run_dir: Path, manifest: dict[str, Any]) -> Path | None:
    """Per-transaction latency over submit time, the protocol in force shaded, switch
    commands and node events marked."""
    import csv

    from testbed.chain import BLOCKS_CSV, LATENCY_CSV

    lat_path, blk_path = run_dir / LATENCY_CSV, run_dir / BLOCKS_CSV
    if not lat_path.exists():
        return None
    rows = [r for r in csv.DictReader(open(lat_path)) if r["latency_s"]]
    if not rows:
        return None
    colours = {"pbft": "tab:blue", "bigfoot": "tab:orange"}
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=150)
    for proto in sorted({r["protocol"] for r in rows}):
        pts = [(float(r["submit_s"]), float(r["latency_s"]) * 1000) for r in rows
               if r["protocol"] == proto]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=3, alpha=0.35,
                   color=colours.get(proto, "0.3"), label=f"tx under {proto or '?'}")
    # 1 s bins of the mean latency
    bins: dict[int, list[float]] = {}
    for r in rows:
        bins.setdefault(int(float(r["submit_s"])), []).append(float(r["latency_s"]) * 1000)
    xs = sorted(bins)
    ax.plot([x + 0.5 for x in xs], [sum(bins[x]) / len(bins[x]) for x in xs], color="k", lw=1.2,
            label="mean per 1 s")
    if blk_path.exists():
        blocks = list(csv.DictReader(open(blk_path)))
        for prev, cur in zip(blocks, blocks[1:], strict=False):
            if prev["protocol"] != cur["protocol"]:
                t = float(cur["t_s"])
                ax.axvline(t, color="tab:red", lw=1.0)
                ax.annotate(f"first {cur['protocol']} block (h={cur['height']})", (t, 0),
                            xytext=(3, 3), textcoords="offset points", fontsize=7,
                            color="tab:red")
    for ev in manifest.get("events", []):
        if ev.get("action") == "switch_protocol":
            ax.axvline(ev["actual_s"], color="tab:red", ls="--", lw=0.8)
            ax.annotate(f"switch -> {ev['protocol']} sent", (ev["actual_s"], 0), xytext=(-3, 60),
                        textcoords="offset points", fontsize=7, rotation=90, ha="right",
                        color="tab:red")
        elif ev.get("action") in ("host_down", "host_up", "link_down", "link_up", "set_link",
                                  "crash", "restart", "partition", "heal", "slow"):
            ax.axvline(ev["actual_s"], color="0.5", ls=":", lw=0.8)
            ax.annotate(ev["action"], (ev["actual_s"], 0), xytext=(2, 100),
                        textcoords="offset points", fontsize=6, rotation=90, color="0.4")
    stalled = (manifest.get("chain") or {}).get("liveness", {}).get("stalls", [])
    for i, st in enumerate(stalled):
        ax.axvspan(st["from_s"], st["to_s"], color="tab:red", alpha=0.12, lw=0,
                   label="stalled (no block, tx waiting)" if i == 0 else None)
    mark_unreliable(ax, manifest)
    ax.set_xlabel("transaction submit time (s)")
    ax.set_ylabel("commit latency (ms)")
    exp = manifest.get("experiment", {})
    ax.set_title(f"{exp.get('name', '')}: per-transaction latency", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", markerscale=3)
    fig.tight_layout()
    out = run_dir / "chain_latency.png"
    fig.savefig(out)
    plt.close(fig)
    return out
