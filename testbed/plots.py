"""Figures drawn only from saved CSVs (so `chaintwin report` can redraw them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from testbed.analysis import THROUGHPUT_CSV, read_throughput  # noqa: E402


def throughput_figure(run_dir: Path, manifest: dict[str, Any]) -> Path | None:
    if not (run_dir / THROUGHPUT_CSV).exists():
        return None
    series = read_throughput(run_dir)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.8), dpi=150)
    for (cap, flow), (t, v) in sorted(series.items()):
        label = flow if len({c for c, _ in series}) == 1 else f"{flow} @ {cap}"
        ax.plot(t, v, lw=1.2, label=label)
    for ev in manifest.get("events", []):
        if ev.get("action") not in ("start", "stop"):
            ax.axvline(ev["at"], color="0.5", ls=":", lw=0.8)
            ax.annotate(ev["action"], (ev["at"], ax.get_ylim()[1]), fontsize=7, rotation=90,
                        va="top", ha="right", color="0.4")
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
