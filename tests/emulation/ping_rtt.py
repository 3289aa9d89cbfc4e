"""RTT verdicts from ping logs that separate the emulated delay from machine stalls.

The acceptance is the mean RTT within tolerance of the configured one; on an idle host a
few pings come back 1-4 ms late (each release runs the packet's path in userspace), and
the mean absorbs that. A stall of the machine (a VM paused ~70 ms, seen on the CI host)
delays the one ping in flight by tens of ms and alone moves the mean of 30 pings by over
2 ms. The health judge calls a release more than 10 ms late a stall (testbed/health.py,
Thresholds.stall_ms); the same line is drawn here: pings later than STALL_MS past the
configured RTT are stalls, at most MAX_STALLED of them are allowed and named, and the
mean of the others must be within tolerance. A systematic error (every packet late, or
any ping early) still fails.
"""

from __future__ import annotations

import re
import statistics

STALL_MS = 10.0
"""A ping this much later than configured was stalled, not shaped (health's stall line)."""
MAX_STALLED = 2
"""Stalled pings allowed in one train: two in 3 s is the worst the CI host showed."""


def ping_times(text: str, skip_first: bool = True) -> list[float]:
    """Round-trip times (ms) of the replies in a ping log; the first one also waits for
    ARP (netem delays it, the userspace line does not), so it is left out by default."""
    return [float(t) for seq, t in re.findall(r"icmp_seq=(\d+) .*?time=([\d.]+) ms", text)
            if not (skip_first and seq == "1")]


def check_rtt(times: list[float], want_ms: float, tol_ms: float, *,
              low_ms: float | None = None) -> None:
    """Assert the pings measure `want_ms`: the mean of the unstalled pings within
    [want - low, want + tol] (low defaults to tol), no ping early by more than `low`,
    at most MAX_STALLED stalled."""
    low = tol_ms if low_ms is None else low_ms
    stalled = [t for t in times if t > want_ms + STALL_MS]
    kept = [t for t in times if t <= want_ms + STALL_MS]
    assert kept, f"no unstalled ping replies: {times}"
    assert len(stalled) <= MAX_STALLED, \
        f"{len(stalled)} of {len(times)} pings stalled (> {want_ms + STALL_MS} ms): {stalled}"
    early = [t for t in kept if t < want_ms - low]
    assert not early, f"pings earlier than the configured {want_ms} ms: {early}"
    avg = statistics.fmean(kept)
    assert want_ms - low <= avg <= want_ms + tol_ms, \
        f"mean RTT {avg:.3f} ms of {len(kept)} pings ({len(stalled)} stalled left out: " \
        f"{stalled}), set {want_ms} ms"
