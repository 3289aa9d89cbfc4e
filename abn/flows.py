"""The middlebox's flow table (the ABN paper's Table 1), with no clock and no I/O.

A flow is one direction of a TCP connection, keyed by its 5-tuple, and is registered by
any segment that is not a pure ACK (data, SYN, FIN, RST). Pure ACKs are control traffic:
they are counted against the period's control bytes and credited to the data flow they
acknowledge (the reverse key), which is how the shim finds the rate to write into them.

Slots: the paper's timer counts the allocation periods ("time slots") a flow has spent.
`take_period()` closes a slot for every flow (a slot the flow joined part-way through
counts as spent, so a deadline is never overestimated) and hands back the period's
non-TCP and control bytes, from which the caller derives C_r (allocators.residual_capacity).

Size bound: at most `max_flows` flows are tracked (default 4096). A packet that would
create a flow beyond the bound is not tracked but counted, in packets and bytes (counting
distinct untracked flows would mean tracking them).

Times are passed in (seconds, any monotonic origin), so the table is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from abn.options import tcp_info

DEFAULT_MAX_FLOWS = 4096
TCP = 6


class FlowKey(NamedTuple):
    """One direction of a connection: the sender's address and port first."""

    src: str
    sport: int
    dst: str
    dport: int
    proto: int = TCP

    def reversed(self) -> FlowKey:
        """The key of the opposite direction (where this flow's ACKs travel)."""
        return FlowKey(self.dst, self.dport, self.src, self.sport, self.proto)

    def to_dict(self) -> dict[str, Any]:
        return self._asdict()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowKey:
        return cls(str(data["src"]), int(data["sport"]), str(data["dst"]), int(data["dport"]),
                   int(data.get("proto", TCP)))


def key_of(packet: bytes) -> FlowKey | None:
    """The flow key of a well-formed, unfragmented IPv4/TCP packet, else None."""
    info = tcp_info(packet)
    if info is None:
        return None
    return FlowKey(info.src, info.sport, info.dst, info.dport)


@dataclass(frozen=True, slots=True)
class FlowView:
    """What an allocator may see of a flow; small, immutable, and JSON-able, so an
    allocator can be driven from a recorded table."""

    key: FlowKey
    remaining_bytes: int | None
    """Declared size minus data seen; None when the size is unknown."""
    slots_left: int | None
    """Slots before the deadline (1 = this is the last; 0 or less = missed); None: none."""
    last_period_bytes: int
    """Payload bytes seen in the last closed period."""

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key.to_dict(), "remaining_bytes": self.remaining_bytes,
                "slots_left": self.slots_left, "last_period_bytes": self.last_period_bytes}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowView:
        remaining, slots = data.get("remaining_bytes"), data.get("slots_left")
        return cls(FlowKey.from_dict(data["key"]),
                   None if remaining is None else int(remaining),
                   None if slots is None else int(slots), int(data.get("last_period_bytes", 0)))


@dataclass(slots=True)
class Flow:
    """One row of the flow table."""

    key: FlowKey
    first_seen: float
    last_seen: float
    """Last packet of any kind credited to the flow, its ACKs included."""
    last_active: float
    """Last packet from the sender (not a pure ACK); idleness is measured from here."""
    size_bytes: int | None = None
    """Declared data size; None for flows that were only observed."""
    required_slots: int | None = None
    """Declared deadline, in slots from registration; None for no deadline."""
    timer: int = 0
    """Slots spent so far (the paper's timer)."""
    data_bytes: int = 0
    """Payload bytes seen (retransmissions count again: the middlebox cannot tell)."""
    period_bytes: int = 0
    last_period_bytes: int = 0
    packets: int = 0
    acks: int = 0
    """Pure ACKs seen travelling back to the sender."""
    rate_bps: float | None = None
    """The allocation to write into this flow's ACKs; None until the first allocation."""

    @property
    def remaining_bytes(self) -> int | None:
        return None if self.size_bytes is None else max(self.size_bytes - self.data_bytes, 0)

    @property
    def slots_left(self) -> int | None:
        return None if self.required_slots is None else self.required_slots - self.timer

    def view(self) -> FlowView:
        return FlowView(self.key, self.remaining_bytes, self.slots_left, self.last_period_bytes)


@dataclass(frozen=True, slots=True)
class PeriodStats:
    """Bytes (IP total length) seen in one period, by kind."""

    non_tcp_bytes: int = 0
    control_bytes: int = 0
    """Pure ACKs, whether or not their data flow is tracked."""
    data_bytes: int = 0
    """Everything else of tracked flows."""
    untracked_packets: int = 0
    untracked_bytes: int = 0
    """Non-ACK TCP packets of flows the full table could not take."""

    def non_tcp_bps(self, period_s: float) -> float:
        return self.non_tcp_bytes * 8 / period_s

    def control_bps(self, period_s: float) -> float:
        return self.control_bytes * 8 / period_s


class FlowTable:
    """Flows by 5-tuple, bounded to `max_flows`, with per-period accounting."""

    def __init__(self, max_flows: int = DEFAULT_MAX_FLOWS) -> None:
        if max_flows < 1:
            raise ValueError(f"max_flows must be at least 1, got {max_flows}")
        self.max_flows = max_flows
        self._flows: dict[FlowKey, Flow] = {}
        self._period = _Counters()
        self.untracked_packets_total = 0

    def __len__(self) -> int:
        return len(self._flows)

    def __iter__(self) -> Iterator[Flow]:
        return iter(list(self._flows.values()))

    def __contains__(self, key: object) -> bool:
        return key in self._flows

    def get(self, key: FlowKey) -> Flow | None:
        return self._flows.get(key)

    def for_ack(self, ack_key: FlowKey) -> Flow | None:
        """The data flow a pure ACK travelling along `ack_key` acknowledges."""
        return self._flows.get(ack_key.reversed())

    def _create(self, key: FlowKey, now: float) -> Flow | None:
        if len(self._flows) >= self.max_flows:
            return None
        flow = self._flows[key] = Flow(key, now, now, now)
        return flow

    def register(self, key: FlowKey, now: float, size_bytes: int | None = None,
                 deadline_slots: int | None = None) -> Flow | None:
        """Declare a flow's size and deadline (the paper's flows declare both); a known
        flow keeps its counters and gets the new declaration, its timer restarting.
        None (and not tracked) when the table is full."""
        if size_bytes is not None and size_bytes < 0:
            raise ValueError(f"{key}: size_bytes must be >= 0, got {size_bytes}")
        if deadline_slots is not None and deadline_slots < 1:
            raise ValueError(f"{key}: deadline_slots must be >= 1, got {deadline_slots}")
        flow = self._flows.get(key) or self._create(key, now)
        if flow is None:
            return None
        flow.size_bytes, flow.required_slots, flow.timer = size_bytes, deadline_slots, 0
        return flow

    def observe(self, key: FlowKey, now: float, payload_bytes: int, is_pure_ack: bool, *,
                wire_bytes: int) -> Flow | None:
        """Account one TCP packet travelling along `key`; `wire_bytes` is its IP length.

        Returns the flow whose rate applies: for a pure ACK, the data flow it
        acknowledges (the reverse key), if tracked; otherwise the packet's own flow,
        created on first sight, or None if the table is full.
        """
        if payload_bytes < 0 or wire_bytes < 0:
            raise ValueError(f"{key}: negative size (payload {payload_bytes}, wire {wire_bytes})")
        if is_pure_ack:
            self._period.control_bytes += wire_bytes
            flow = self.for_ack(key)
            if flow is not None:
                flow.acks += 1
                flow.last_seen = now
            return flow
        flow = self._flows.get(key) or self._create(key, now)
        if flow is None:
            self._period.untracked_packets += 1
            self._period.untracked_bytes += wire_bytes
            self.untracked_packets_total += 1
            return None
        self._period.data_bytes += wire_bytes
        flow.packets += 1
        flow.data_bytes += payload_bytes
        flow.period_bytes += payload_bytes
        flow.last_seen = flow.last_active = now
        return flow

    def observe_non_tcp(self, wire_bytes: int) -> None:
        """Account a packet that is not TCP (it takes capacity no allocation governs)."""
        if wire_bytes < 0:
            raise ValueError(f"negative size {wire_bytes}")
        self._period.non_tcp_bytes += wire_bytes

    def expire(self, now: float, idle_timeout: float) -> list[Flow]:
        """Drop the flows whose sender has been silent for longer than `idle_timeout`
        (the paper: no data in a period means the flow is done); returns them."""
        gone = [f for f in self._flows.values() if now - f.last_active > idle_timeout]
        for flow in gone:
            del self._flows[flow.key]
        return gone

    def take_period(self) -> PeriodStats:
        """Close the current slot: return and reset the period's byte counts, advance
        every flow's timer by one slot and roll its period bytes over."""
        stats = self._period.freeze()
        self._period = _Counters()
        for flow in self._flows.values():
            flow.timer += 1
            flow.last_period_bytes, flow.period_bytes = flow.period_bytes, 0
        return stats

    def views(self) -> list[FlowView]:
        """The allocator's input, in registration order (deterministic)."""
        return [flow.view() for flow in self._flows.values()]

    def set_rates(self, rates: Mapping[FlowKey, float]) -> None:
        """Record an allocation; naming a flow the table does not hold is a caller bug."""
        unknown = [key for key in rates if key not in self._flows]
        if unknown:
            raise KeyError(f"allocation names flows not in the table: {unknown}")
        for key, rate in rates.items():
            self._flows[key].rate_bps = rate


@dataclass(slots=True)
class _Counters:
    non_tcp_bytes: int = 0
    control_bytes: int = 0
    data_bytes: int = 0
    untracked_packets: int = 0
    untracked_bytes: int = 0

    def freeze(self) -> PeriodStats:
        return PeriodStats(self.non_tcp_bytes, self.control_bytes, self.data_bytes,
                           self.untracked_packets, self.untracked_bytes)
