"""Flow declarations: how a sender tells the middlebox a flow's size and deadline.

The paper's flow table holds each flow's data size and required slots (Table 1), but the
paper does not say how the middlebox learns them. Here the sender declares them in one
UDP datagram to the shim before it connects (abn/slim.py does), and the shim registers
the flow at its next period. The datagram is a small JSON object:

    {"sport": 40312, "dst": "10.0.5.2", "dport": 6100, "size": 65536, "deadline_ms": 500}

The flow's source address is the datagram's own source address, so a host can declare
only its own flows. A declaration is untrusted input: anything malformed is refused with
a reason and changes nothing; datagrams are read at most `max_per_period` per period and
at most MAX_DATAGRAM bytes each, and the socket never answers (no reflection).
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
from dataclasses import dataclass

from abn.flows import FlowKey

MAX_DATAGRAM = 512
MAX_SIZE_BYTES = 1 << 40
MAX_DEADLINE_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class Declaration:
    key: FlowKey
    size_bytes: int
    deadline_s: float

    def deadline_slots(self, period_s: float) -> int:
        """Whole slots the flow may take (at least one): the deadline rounded down, so
        a flow the shim finishes in its slots meets the sender's deadline."""
        return max(1, math.floor(self.deadline_s / period_s + 1e-9))


def parse_declaration(data: bytes, src: str) -> Declaration:
    """The declaration in one datagram from `src`; ValueError naming what is wrong."""
    if len(data) > MAX_DATAGRAM:
        raise ValueError(f"declaration of {len(data)} bytes (at most {MAX_DATAGRAM})")
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"declaration is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ValueError("declaration must be a JSON object")
    extra = set(obj) - {"sport", "dst", "dport", "size", "deadline_ms"}
    if extra:
        raise ValueError(f"declaration has unknown fields {sorted(extra)}")

    def port(name: str) -> int:
        v = obj.get(name)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 65535:
            raise ValueError(f"declaration {name!r} must be a port 1..65535, got {v!r}")
        return v

    dst = obj.get("dst")
    try:
        dst = str(ipaddress.IPv4Address(dst))
    except (ValueError, TypeError):
        raise ValueError(f"declaration 'dst' must be an IPv4 address, got {dst!r}") from None
    size = obj.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= MAX_SIZE_BYTES:
        raise ValueError(f"declaration 'size' must be 1..{MAX_SIZE_BYTES} bytes, got {size!r}")
    deadline = obj.get("deadline_ms")
    if (isinstance(deadline, bool) or not isinstance(deadline, int | float)
            or not 0 < deadline <= MAX_DEADLINE_MS):  # NaN fails the comparison too
        raise ValueError(f"declaration 'deadline_ms' must be in (0, {MAX_DEADLINE_MS}], "
                         f"got {deadline!r}")
    return Declaration(FlowKey(src, port("sport"), dst, port("dport")), size, deadline / 1e3)


def encode_declaration(sport: int, dst: str, dport: int, size_bytes: int,
                       deadline_s: float) -> bytes:
    return json.dumps({"sport": sport, "dst": dst, "dport": dport, "size": size_bytes,
                       "deadline_ms": round(deadline_s * 1e3, 3)}).encode()


class DeclarationListener:
    """A non-blocking UDP socket the shim drains once per period."""

    def __init__(self, port: int, bind: str = "0.0.0.0", max_per_period: int = 1024) -> None:
        self.max_per_period = max_per_period
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        self.sock.bind((bind, port))
        self.sock.setblocking(False)
        self.accepted = 0
        self.refused = 0
        self.last_error = ""

    def drain(self) -> list[Declaration]:
        out: list[Declaration] = []
        for _ in range(self.max_per_period):
            try:
                data, (src, _port) = self.sock.recvfrom(MAX_DATAGRAM + 1)
            except BlockingIOError:
                break
            try:
                out.append(parse_declaration(data, src))
                self.accepted += 1
            except ValueError as exc:
                self.refused += 1
                self.last_error = f"{src}: {exc}"
        return out

    def close(self) -> None:
        self.sock.close()
