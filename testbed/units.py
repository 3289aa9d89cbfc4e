"""Parsing of the quantities that YAML files carry: rates, durations, sizes, percentages.

Numbers without a unit follow Mininet's conventions (rates in Mbit/s, delays in ms).
`Mbps`/`Gbps` mean megabits/gigabits per second, as researchers write them; note that
this differs from tc, where `mbps` means megabytes per second. Every parser raises
ValueError with a message saying what was expected, which pydantic puts next to the
field path.
"""

from __future__ import annotations

import re

_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

_RATE_UNITS = {
    "bit": 1.0, "bps": 1.0, "bit/s": 1.0,
    "kbit": 1e3, "kbps": 1e3, "kbit/s": 1e3, "k": 1e3,
    "mbit": 1e6, "mbps": 1e6, "mbit/s": 1e6, "m": 1e6,
    "gbit": 1e9, "gbps": 1e9, "gbit/s": 1e9, "g": 1e9,
}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0, "min": 60.0}
_SIZE_UNITS = {
    "b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}


def _split(value: str, what: str, example: str) -> tuple[float, str]:
    m = re.fullmatch(_NUM + r"\s*([a-zA-Z/%]*)", value.strip())
    if not m:
        raise ValueError(f"expected {what} such as {example!r}, got {value!r}")
    return float(m.group(1)), m.group(2).lower()


def parse_rate_bps(value: str | float | int) -> float:
    """Rate in bit/s. Bare numbers are Mbit/s (as in Mininet's TCLink)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a rate such as '100mbit', got {value!r}")
    if isinstance(value, int | float):
        bps = float(value) * 1e6
    else:
        num, unit = _split(value, "a rate", "100mbit")
        if unit not in _RATE_UNITS:
            raise ValueError(
                f"unknown rate unit {unit!r} in {value!r}; use bit, kbit, mbit or gbit"
            )
        bps = num * _RATE_UNITS[unit]
    if bps <= 0:
        raise ValueError(f"rate must be positive, got {value!r}")
    return bps


def parse_seconds(value: str | float | int, bare_unit: str = "ms") -> float:
    """Duration in seconds. Bare numbers are in `bare_unit` (ms for delays, s for times)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '20ms', got {value!r}")
    if isinstance(value, int | float):
        secs = float(value) * _TIME_UNITS[bare_unit]
    else:
        num, unit = _split(value, "a duration", "20ms")
        unit = unit or bare_unit
        if unit not in _TIME_UNITS:
            raise ValueError(f"unknown time unit {unit!r} in {value!r}; use us, ms, s or min")
        secs = num * _TIME_UNITS[unit]
    if secs < 0:
        raise ValueError(f"duration must not be negative, got {value!r}")
    return secs


def parse_percent(value: str | float | int) -> float:
    """A probability in [0, 1] from '1%' or a bare number of percent (1 -> 1%)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a percentage such as '1%', got {value!r}")
    if isinstance(value, int | float):
        pct = float(value)
    else:
        num, unit = _split(value, "a percentage", "1%")
        if unit not in ("%", ""):
            raise ValueError(f"expected a percentage such as '1%', got {value!r}")
        pct = num
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentage must be within 0-100%, got {value!r}")
    return pct / 100.0


def parse_queue(value: str | int) -> tuple[str, int]:
    """Queue limit: an integer is packets (pfifo), a size string is bytes (bfifo)."""
    if isinstance(value, bool):
        raise ValueError(f"expected packets (1000) or bytes ('1MB'), got {value!r}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"queue must be positive, got {value!r}")
        return ("packets", value)
    num, unit = _split(value, "a queue size", "1000 or '1MB'")
    if unit in ("", "p", "pkt", "pkts", "packets"):
        return ("packets", int(num))
    if unit not in _SIZE_UNITS:
        raise ValueError(f"unknown size unit {unit!r} in {value!r}; use B, KB, MB, KiB, MiB")
    nbytes = int(num * _SIZE_UNITS[unit])
    if nbytes <= 0:
        raise ValueError(f"queue must be positive, got {value!r}")
    return ("bytes", nbytes)


def format_rate_tc(bps: float) -> str:
    """Rate for tc, in kbit to keep precision (tc's 'mbit' is megabit, 'mbps' megabyte)."""
    return f"{max(1, round(bps / 1000))}kbit"


def format_time_tc(seconds: float) -> str:
    return f"{round(seconds * 1e6)}us"
