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

Precision: ping prints a reply's time with three significant digits, so at 200 ms each
is rounded to a whole ms and a true 200.55 ms reads 201. The mean is therefore taken
from ping's own summary (microsecond precision): its total less the rounded times of
the replies left out (the first one and the stalls), which is off by at most half a
printed digit per reply left out, spread over the replies kept.
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


def ping_total_ms(text: str, skip_first: bool = True) -> float | None:
    """The exact sum (ms) of the reply times `ping_times` returns, from the summary line
    (avg x received), less the first reply's printed time when it is skipped; None when
    the log has no summary or its reply lines do not add up to `received`."""
    m = re.search(r"(\d+) received", text)
    r = re.search(r"rtt min/avg/max/mdev = [\d.]+/([\d.]+)/", text)
    replies = re.findall(r"icmp_seq=(\d+) .*?time=([\d.]+) ms", text)
    if not (m and r) or len(replies) != int(m.group(1)):
        return None
    total = float(r.group(1)) * len(replies)
    return total - sum(float(t) for seq, t in replies if skip_first and seq == "1")


def check_rtt(times: list[float], want_ms: float, tol_ms: float, *,
              low_ms: float | None = None, total_ms: float | None = None) -> None:
    """Assert the pings measure `want_ms`: the mean of the unstalled pings within
    [want - low, want + tol] (low defaults to tol), no ping early by more than `low`,
    at most MAX_STALLED stalled. `total_ms` (from `ping_total_ms`) is the exact sum of
    `times`, which ping prints rounded; with it the mean is exact up to the rounding of
    the stalls left out."""
    low = tol_ms if low_ms is None else low_ms
    stalled = [t for t in times if t > want_ms + STALL_MS]
    kept = [t for t in times if t <= want_ms + STALL_MS]
    assert kept, f"no unstalled ping replies: {times}"
    assert len(stalled) <= MAX_STALLED, \
        f"{len(stalled)} of {len(times)} pings stalled (> {want_ms + STALL_MS} ms): {stalled}"
    early = [t for t in kept if t < want_ms - low]
    assert not early, f"pings earlier than the configured {want_ms} ms: {early}"
    if total_ms is None:
        avg = statistics.fmean(kept)
    else:
        avg = (total_ms - sum(stalled)) / len(kept)
    assert want_ms - low <= avg <= want_ms + tol_ms, \
        f"mean RTT {avg:.3f} ms of {len(kept)} pings ({len(stalled)} stalled left out: " \
        f"{stalled}), set {want_ms} ms"
