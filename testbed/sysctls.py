"""Per-host kernel settings an experiment may change, checked before anything starts.

Only keys listed here are accepted: each is per network namespace (so a host's value
cannot leak to the machine or to another host) and is one that congestion-control and
blockchain experiments need: socket buffers (the ABN paper raised tcp_wmem), the
congestion control, and how TCP treats reordering (RACK takes reordering jitter for
loss; an ABN sender must not). A typo gets the closest known keys in its error.
"""

from __future__ import annotations

import difflib
import re

KNOWN: dict[str, str] = {
    "net.ipv4.tcp_wmem": "send buffer min/default/max, bytes ('4096 16384 268435456')",
    "net.ipv4.tcp_rmem": "receive buffer min/default/max, bytes",
    "net.ipv4.tcp_congestion_control": "default congestion control of new sockets",
    "net.ipv4.tcp_recovery": "RACK loss detection bits (0 turns RACK off)",
    "net.ipv4.tcp_reordering": "initial reordering degree before a loss is assumed",
    "net.ipv4.tcp_max_reordering": "upper bound of the learned reordering degree",
    "net.ipv4.tcp_dsack": "send duplicate SACKs (0/1)",
    "net.ipv4.tcp_sack": "selective acknowledgements (0/1)",
    "net.ipv4.tcp_timestamps": "TCP timestamps (0/1/2)",
    "net.ipv4.tcp_early_retrans": "early retransmit / tail loss probe mode",
    "net.ipv4.tcp_frto": "forward RTO recovery (0/1/2)",
    "net.ipv4.tcp_ecn": "ECN negotiation (0/1/2)",
    "net.ipv4.tcp_limit_output_bytes": "TCP small queues limit, bytes",
    "net.ipv4.tcp_notsent_lowat": "unsent bytes that wake a writer",
    "net.ipv4.tcp_slow_start_after_idle": "restart slow start after idle (0/1)",
    "net.ipv4.tcp_no_metrics_save": "do not cache metrics of closed connections (0/1)",
    "net.ipv4.tcp_mtu_probing": "packetization-layer MTU probing (0/1/2)",
    "net.ipv4.tcp_pacing_ss_ratio": "pacing rate in slow start, % of cwnd/RTT",
    "net.ipv4.tcp_pacing_ca_ratio": "pacing rate in congestion avoidance, %",
}
_VALUE = re.compile(r"^[A-Za-z0-9_ .-]{1,100}$")


def check(settings: dict[str, object], where: str) -> dict[str, str]:
    """The settings as strings; raises ValueError naming the bad key or value."""
    out: dict[str, str] = {}
    for key, value in settings.items():
        if key not in KNOWN:
            close = difflib.get_close_matches(key, KNOWN, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(close)}?" if close else (
                f"; known: {', '.join(sorted(KNOWN))}")
            raise ValueError(f"{where}: unknown or not per-host sysctl {key!r}{hint}")
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"{where}: sysctl {key}: expected a number or a string, "
                             f"got {value!r}")
        text = str(value).strip()
        if not _VALUE.match(text):
            raise ValueError(f"{where}: sysctl {key}: value {value!r} is not a plain "
                             "number, word or space-separated list")
        out[key] = text
    return out


def argv(settings: dict[str, str]) -> tuple[str, ...]:
    """One `sysctl -w` for all of a host's settings (fails on the first it cannot set)."""
    return ("sysctl", "-q", "-w", *(f"{k}={v}" for k, v in settings.items()))
